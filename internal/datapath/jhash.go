package datapath

import "github.com/clusterip/clusterip/hash"

const (
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	ethHdrLen     = 14

	// filterAccept is the snap length the capture filter returns for
	// frames that go to user space: the whole frame, GSO super-frames of
	// 64 KB included.
	filterAccept = 0x40000
)

// The three words of jhash, as the programs' steps number them.
const (
	regA = iota
	regB
	regC
)

// jhashWords returns how many words the kernel target hashes in cfg's mode
// (source address, then source port, then destination port) and the
// initial value of jhash_{1,2,3}words for them.
func jhashWords(cfg hash.Config) (words, iv uint32) {
	words = 1
	switch cfg.Mode {
	case hash.SourceIPSourcePort:
		words = 2
	case hash.SourceIPSourcePortDestPort:
		words = 3
	}
	return words, cfg.Seed + 0xdeadbeef + words<<2
}

// jhashFinal is __jhash_final(a, b, c) as steps x ^= y; x -= rol32(y, k),
// with a, b, c numbered 0, 1, 2 (regA, regB, regC).
var jhashFinal = [...]struct{ x, y, k int }{
	{regC, regB, 14}, {regA, regC, 11}, {regB, regA, 25}, {regC, regB, 16},
	{regA, regC, 4}, {regB, regA, 14}, {regC, regB, 24},
}

// jhashMix is __jhash_mix(a, b, c) as steps x -= z; x ^= rol32(z, k);
// z += y.
var jhashMix = [...]struct{ x, z, y, k int }{
	{regA, regC, regB, 4}, {regB, regA, regC, 6}, {regC, regB, regA, 8},
	{regA, regC, regB, 16}, {regB, regA, regC, 19}, {regC, regB, regA, 4},
}
