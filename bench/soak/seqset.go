package main

import "slices"

// seqSet is the seqs a member received in one room, or in one
// conversation. add reports whether seq was there already.
type seqSet interface {
	add(seq uint64) (had bool)
	has(seq uint64) bool
}

// pageBits is how many seqs a page of a bitSet holds.
const pageBits = 4096

// bitSet holds seqs as bits, in pages allocated as seqs arrive: a member
// of the room of 1,000 receives nearly every seq of the stream, so a bit
// each (an hour at 1,000 messages a second is 450 KiB a member).
type bitSet struct {
	first uint64                   // the page number of pages[0]
	pages []*[pageBits / 64]uint64 // nil where no seq arrived
}

func (b *bitSet) add(seq uint64) bool {
	p := seq / pageBits
	switch {
	case len(b.pages) == 0:
		b.first = p
	case p < b.first:
		b.pages = append(make([]*[pageBits / 64]uint64, b.first-p), b.pages...)
		b.first = p
	}
	i := p - b.first
	for uint64(len(b.pages)) <= i {
		b.pages = append(b.pages, nil)
	}
	if b.pages[i] == nil {
		b.pages[i] = new([pageBits / 64]uint64)
	}
	w, bit := &b.pages[i][seq%pageBits/64], uint64(1)<<(seq%64)
	had := *w&bit != 0
	*w |= bit
	return had
}

func (b *bitSet) has(seq uint64) bool {
	p := seq / pageBits
	if p < b.first || p-b.first >= uint64(len(b.pages)) || b.pages[p-b.first] == nil {
		return false
	}
	return b.pages[p-b.first][seq%pageBits/64]&(uint64(1)<<(seq%64)) != 0
}

// listSet holds seqs sorted, for a small room or a conversation, whose
// seqs are few and far apart in the stream's.
type listSet struct{ s []uint64 }

func (l *listSet) add(seq uint64) bool {
	if n := len(l.s); n == 0 || seq > l.s[n-1] {
		l.s = append(l.s, seq)
		return false
	}
	i, found := slices.BinarySearch(l.s, seq)
	if found {
		return true
	}
	l.s = slices.Insert(l.s, i, seq)
	return false
}

func (l *listSet) has(seq uint64) bool {
	_, found := slices.BinarySearch(l.s, seq)
	return found
}
