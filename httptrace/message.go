package httptrace

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Kind says whether a Record is a request or a response.
type Kind string

// The kinds of Record.
const (
	KindRequest  Kind = "request"
	KindResponse Kind = "response"
)

// TruncatedMarker is appended to a URL (or a status reason) that was cut at
// the configured maximum length, so a shortened URL is never mistaken for
// the real one.
const TruncatedMarker = "...[truncated]"

// Record is one HTTP request line or response status line seen on the wire.
// Text fields are sanitised: bytes outside printable ASCII appear as \xNN,
// so a record is always one safe line of text.
type Record struct {
	Time time.Time      `json:"time"`
	Src  netip.AddrPort `json:"src"`
	Dst  netip.AddrPort `json:"dst"`
	Kind Kind           `json:"kind"`
	// Method, URL and Host are set for requests. Host is empty when the
	// request had no Host header (or it was not seen before the header
	// block ended or the session went idle).
	Method string `json:"method,omitempty"`
	URL    string `json:"url,omitempty"`
	Host   string `json:"host,omitempty"`
	// Version is "HTTP/1.1" and the like, for both kinds.
	Version string `json:"version"`
	// Status and Reason are set for responses.
	Status int    `json:"status,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Truncated is true when the URL or reason was longer than the
	// configured maximum; the text then ends with TruncatedMarker.
	Truncated bool `json:"truncated,omitempty"`
	// VLAN is the outermost VLAN ID the message arrived with, 0 for none.
	VLAN uint16 `json:"vlan,omitempty"`
	// Incomplete is true when the request line was complete but the
	// header block never ended (the session went idle or the headers
	// exceeded their limit), so Host may be missing.
	Incomplete bool `json:"incomplete,omitempty"`
}

// String formats the record as one line:
// "time src:port -> dst:port METHOD URL HTTP/x.y host=..." for a request and
// "time src:port -> dst:port HTTP/x.y STATUS REASON" for a response.
func (r Record) String() string {
	var b strings.Builder
	b.WriteString(r.Time.Format("15:04:05.000000"))
	b.WriteByte(' ')
	b.WriteString(r.Src.String())
	b.WriteString(" -> ")
	b.WriteString(r.Dst.String())
	b.WriteByte(' ')
	if r.Kind == KindResponse {
		b.WriteString(r.Version)
		b.WriteByte(' ')
		b.WriteString(strconv.Itoa(r.Status))
		if r.Reason != "" {
			b.WriteByte(' ')
			b.WriteString(r.Reason)
		}
		if r.VLAN != 0 {
			b.WriteString(" vlan=")
			b.WriteString(strconv.Itoa(int(r.VLAN)))
		}
		return b.String()
	}
	b.WriteString(r.Method)
	b.WriteByte(' ')
	b.WriteString(r.URL)
	b.WriteByte(' ')
	b.WriteString(r.Version)
	b.WriteString(" host=")
	b.WriteString(r.Host)
	if r.VLAN != 0 {
		b.WriteString(" vlan=")
		b.WriteString(strconv.Itoa(int(r.VLAN)))
	}
	if r.Incomplete {
		b.WriteString(" (headers incomplete)")
	}
	return b.String()
}

// methods are the request methods the kernel filter and the parser accept.
var methods = []string{"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT"}

// startsMessage reports whether p begins the way the kernel filter's match
// does: a method and a space, or "HTTP/".
func startsMessage(p []byte) bool {
	for _, m := range methods {
		if len(p) > len(m) && string(p[:len(m)]) == m && p[len(m)] == ' ' {
			return true
		}
	}
	return bytes.HasPrefix(p, []byte("HTTP/"))
}

// mayStartMessage reports whether p is a message start or a prefix of one
// (the first bytes of a pipelined request whose rest is still to come).
func mayStartMessage(p []byte) bool {
	if len(p) == 0 {
		return false
	}
	if startsMessage(p) {
		return true
	}
	for _, m := range append(methods[:len(methods):len(methods)], "HTTP/") {
		w := m
		if m != "HTTP/" {
			w = m + " "
		}
		if len(p) < len(w) && w[:len(p)] == string(p) {
			return true
		}
	}
	return false
}

// parseStatus says what parseMessage found at the start of a buffer.
type parseStatus int

const (
	// needMore: the message head is not complete yet.
	needMore parseStatus = iota
	// complete: rec is set and consumed bytes are the whole head (and any
	// body that fit in the buffer).
	complete
	// truncated: the first line exceeded the limit; rec is set with a
	// marker and the rest of the message can't be found.
	truncated
	// headersTooLong: the first line is complete but the header block
	// exceeded its limit; rec is set (Incomplete) and the state ends.
	headersTooLong
	// malformed: the buffer does not hold an HTTP message head.
	malformed
)

// limits bound the parser's work and memory.
type limits struct {
	maxURL    int // longest URL (or reason) kept, in bytes
	maxHeader int // longest header block after the first line, in bytes
}

// maxLine is the longest first line that is not truncated: the URL limit
// plus room for the longest method, two spaces and "HTTP/1.1\r\n".
func (l limits) maxLine() int { return l.maxURL + len("OPTIONS") + 2 + len("HTTP/1.1\r\n") }

// sessionLimit is how many payload bytes the kernel passes for one session
// before it gives up on it, even if userspace never releases or resets it:
// the bound on what an endless line (or a stalled tracer) can cost. One
// message head needs at most maxLine+maxHeader; the slack of four times
// that lets a burst of pipelined requests through before userspace has
// read them and reset the count (Release.Reset).
func (l limits) sessionLimit() int { return 4 * (l.maxLine() + l.maxHeader) }

// parsed is the result of parseMessage.
type parsed struct {
	status   parseStatus
	rec      Record
	consumed int
	// bodyLeft is the part of a Content-Length body that was not in the
	// buffer.
	bodyLeft int
}

// parseMessage parses the HTTP message head at the start of buf. It never
// reads past buf and never allocates more than the limits allow.
func parseMessage(buf []byte, lim limits) parsed {
	lineEnd := bytes.IndexByte(buf[:min(len(buf), lim.maxLine())], '\n')
	if lineEnd < 0 {
		if len(buf) < lim.maxLine() {
			if !mayStartMessage(buf[:min(len(buf), 9)]) {
				return parsed{status: malformed}
			}
			return parsed{status: needMore}
		}
		return parseTruncated(buf, lim)
	}
	line := buf[:lineEnd]
	line = bytes.TrimSuffix(line, []byte("\r"))
	var p parsed
	if !parseFirstLine(line, lim, &p.rec) {
		return parsed{status: malformed}
	}

	// Header block: lines until an empty one.
	pos := lineEnd + 1
	contentLength := 0
	headEnd := min(len(buf), lineEnd+1+lim.maxHeader)
	for {
		nl := bytes.IndexByte(buf[pos:headEnd], '\n')
		if nl < 0 {
			if headEnd < len(buf) || len(buf)-lineEnd-1 >= lim.maxHeader {
				p.rec.Incomplete = true
				p.status = headersTooLong
				p.consumed = len(buf)
				return p
			}
			p.status = needMore
			return p
		}
		h := bytes.TrimSuffix(buf[pos:pos+nl], []byte("\r"))
		pos += nl + 1
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		switch {
		case p.rec.Kind == KindRequest && p.rec.Host == "" && asciiEqualFold(name, "host"):
			p.rec.Host = sanitize(value[:min(len(value), 255)])
		case asciiEqualFold(name, "content-length"):
			if n, err := strconv.Atoi(string(value[:min(len(value), 12)])); err == nil && n > 0 {
				contentLength = n
			}
		}
	}
	body := min(contentLength, len(buf)-pos)
	p.status = complete
	p.consumed = pos + body
	p.bodyLeft = contentLength - body
	return p
}

// parseFirstLine parses a request line or a status line into rec.
func parseFirstLine(line []byte, lim limits, rec *Record) bool {
	if bytes.HasPrefix(line, []byte("HTTP/")) {
		version, rest, ok := bytes.Cut(line, []byte(" "))
		if !ok || !validVersion(version) {
			return false
		}
		code, reason, _ := bytes.Cut(rest, []byte(" "))
		if len(code) != 3 || code[0] < '1' || code[0] > '5' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' {
			return false
		}
		rec.Kind = KindResponse
		rec.Version = string(version)
		rec.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
		if len(reason) > lim.maxURL {
			rec.Reason = sanitize(reason[:lim.maxURL]) + TruncatedMarker
			rec.Truncated = true
		} else {
			rec.Reason = sanitize(reason)
		}
		return true
	}
	method, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || !knownMethod(method) {
		return false
	}
	sp := bytes.LastIndexByte(rest, ' ')
	if sp <= 0 {
		return false
	}
	url, version := rest[:sp], rest[sp+1:]
	if !validVersion(version) || bytes.IndexByte(url, ' ') >= 0 {
		return false
	}
	rec.Kind = KindRequest
	rec.Method = string(method)
	rec.Version = string(version)
	if len(url) > lim.maxURL {
		rec.URL = sanitize(url[:lim.maxURL]) + TruncatedMarker
		rec.Truncated = true
	} else {
		rec.URL = sanitize(url)
	}
	return true
}

// parseTruncated builds the record of a first line that is longer than the
// limit: the method (or version) and the first maxURL bytes after it.
func parseTruncated(buf []byte, lim limits) parsed {
	var rec Record
	if bytes.HasPrefix(buf, []byte("HTTP/")) {
		version, rest, _ := bytes.Cut(buf, []byte(" "))
		if !validVersion(version) || len(rest) < 4 {
			return parsed{status: malformed}
		}
		code := rest[:3]
		if code[0] < '1' || code[0] > '5' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' || rest[3] != ' ' {
			return parsed{status: malformed}
		}
		rec.Kind = KindResponse
		rec.Version = string(version)
		rec.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
		rest = rest[4:]
		rec.Reason = sanitize(rest[:min(len(rest), lim.maxURL)]) + TruncatedMarker
	} else {
		method, rest, ok := bytes.Cut(buf, []byte(" "))
		if !ok || !knownMethod(method) {
			return parsed{status: malformed}
		}
		url := rest[:min(len(rest), lim.maxURL)]
		if i := bytes.IndexByte(url, ' '); i >= 0 {
			// A space inside the limit would have ended the URL: the
			// line is a request line with an endless version field,
			// which is not HTTP.
			return parsed{status: malformed}
		}
		rec.Kind = KindRequest
		rec.Method = string(method)
		rec.URL = sanitize(url) + TruncatedMarker
	}
	rec.Truncated = true
	return parsed{status: truncated, rec: rec, consumed: len(buf)}
}

func knownMethod(m []byte) bool {
	for _, k := range methods {
		if string(m) == k {
			return true
		}
	}
	return false
}

// validVersion accepts "HTTP/d.d".
func validVersion(v []byte) bool {
	return len(v) == 8 && string(v[:5]) == "HTTP/" &&
		v[5] >= '0' && v[5] <= '9' && v[6] == '.' && v[7] >= '0' && v[7] <= '9'
}

func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// sanitize returns b as a string of printable ASCII, with every other byte
// (and the backslash itself) escaped as \xNN, so that hostile bytes on the
// wire can't inject terminal escapes or fake lines into the output.
func sanitize(b []byte) string {
	clean := true
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			clean = false
			break
		}
	}
	if clean {
		return string(b)
	}
	const hex = "0123456789abcdef"
	var s strings.Builder
	s.Grow(len(b) + 16)
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			s.WriteString(`\x`)
			s.WriteByte(hex[c>>4])
			s.WriteByte(hex[c&0xf])
			continue
		}
		s.WriteByte(c)
	}
	return s.String()
}
