package hash

// jhashInitval is JHASH_INITVAL, the arbitrary constant every jhash variant
// starts from.
const jhashInitval = 0xdeadbeef

// Jhash1Word is the kernel's jhash_1word.
func Jhash1Word(a, initval uint32) uint32 {
	return jhashNwords(a, 0, 0, initval+jhashInitval+(1<<2))
}

// Jhash2Words is the kernel's jhash_2words.
func Jhash2Words(a, b, initval uint32) uint32 {
	return jhashNwords(a, b, 0, initval+jhashInitval+(2<<2))
}

// Jhash3Words is the kernel's jhash_3words.
func Jhash3Words(a, b, c, initval uint32) uint32 {
	return jhashNwords(a, b, c, initval+jhashInitval+(3<<2))
}

// jhashNwords is __jhash_nwords with the __jhash_final macro expanded in
// place, statement for statement, so it can be checked against the kernel
// by eye.
func jhashNwords(a, b, c, initval uint32) uint32 {
	_, _, c = jhashFinal(a+initval, b+initval, c+initval)
	return c
}

// ReciprocalScale is the kernel's reciprocal_scale: it maps val onto
// [0, n) by taking the high half of a 64-bit product. Unlike val % n, this
// keeps the hash values of each result contiguous, which is what lets
// Range describe a node's share as a single interval.
func ReciprocalScale(val, n uint32) uint32 {
	return uint32((uint64(val) * uint64(n)) >> 32)
}
