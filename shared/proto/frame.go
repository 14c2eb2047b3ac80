package proto

import "bytes"

// MaxFrameBytes is the largest server frame the writer builds; a single
// larger event is sent alone.
const MaxFrameBytes = 64 << 10

// Lines calls fn with each JSON object of a frame: objects are separated by
// '\n'; empty and blank lines are skipped. It stops early when fn returns
// false.
func Lines(frame []byte, fn func(line []byte) bool) {
	for len(frame) > 0 {
		line := frame
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			frame = nil
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if !fn(line) {
			return
		}
	}
}

// Frames packs encoded events (each one JSON object without a newline)
// into as few frames as fit in max bytes, separated by '\n'. An event
// larger than max gets a frame of its own. buf is reused for the frame
// data; emit is called with each frame and must not keep it.
func Frames(events [][]byte, max int, buf []byte, emit func(frame []byte) error) ([]byte, error) {
	buf = buf[:0]
	for _, ev := range events {
		if len(buf) > 0 && len(buf)+1+len(ev) > max {
			if err := emit(buf); err != nil {
				return buf, err
			}
			buf = buf[:0]
		}
		if len(buf) > 0 {
			buf = append(buf, '\n')
		}
		buf = append(buf, ev...)
	}
	if len(buf) > 0 {
		if err := emit(buf); err != nil {
			return buf, err
		}
	}
	return buf[:0], nil
}
