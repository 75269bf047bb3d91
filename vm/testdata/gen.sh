#!/bin/sh
# Rebuilds the test objects; run by go generate from vm/.
set -e
for f in progs bench sockets sklookup; do
	clang-19 -O2 -g -fdebug-compilation-dir=. -fdebug-prefix-map="$PWD"=. -target bpf -I/usr/include/x86_64-linux-gnu -Wall -c testdata/$f.c -o testdata/$f.o
done
