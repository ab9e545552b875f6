/*
 * Reference for package hash: the kernel's CLUSTERIP hash, written in the
 * shape of include/linux/jhash.h, include/linux/math.h (reciprocal_scale)
 * and net/ipv4/netfilter/ipt_CLUSTERIP.c (clusterip_hashfn), so that it can
 * be compared with those sources line by line rather than with the Go code.
 *
 * As a second, independent check every hash is also computed with
 * hashword() from Bob Jenkins' original lookup3.c, which jhash_Nwords are
 * specialisations of; the program aborts if the two ever disagree.
 *
 * Input, one query per line, all fields decimal:
 *
 *     mode total seed ip_hostorder sportraw dportraw
 *
 * where mode is the kernel's CLUSTERIP_HASHMODE_* value (0, 1 or 2). With
 * -ports, the last two fields are port numbers instead, which are written
 * to a wire-format header and loaded back the way the kernel loads them
 * (native u16 via skb_header_pointer); this only models x86-64 when run on
 * a little-endian machine.
 *
 * Output, one line per query: "node hash".
 *
 * With -nft, the program models nftables' jhash expression instead
 * (net/netfilter/nft_hash.c, nft_jhash_eval) for rules such as
 *
 *     meta mark set jhash ip6 saddr . th sport . th dport mod N seed S offset 1
 *
 * and each query line is
 *
 *     mode total seed addrhex sport dport
 *
 * where addrhex is the source address as on the wire, 8 or 32 hex digits,
 * and the ports are numbers. The key is built the way nft_payload_eval
 * fills registers: the address, then each port in its own zeroed 4-byte
 * register. It is hashed with the kernel's jhash() and, as the independent
 * check, with lookup3's hashlittle() reading the key a byte at a time;
 * jhash() loads words in the CPU's order, so this models x86-64 only on a
 * little-endian machine.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* include/linux/bitops.h */
static inline u32 rol32(u32 word, unsigned int shift)
{
	return (word << (shift & 31)) | (word >> ((-shift) & 31));
}

/* include/linux/jhash.h */
#define JHASH_INITVAL		0xdeadbeef

#define __jhash_final(a, b, c)			\
{						\
	c ^= b; c -= rol32(b, 14);		\
	a ^= c; a -= rol32(c, 11);		\
	b ^= a; b -= rol32(a, 25);		\
	c ^= b; c -= rol32(b, 16);		\
	a ^= c; a -= rol32(c, 4);		\
	b ^= a; b -= rol32(a, 14);		\
	c ^= b; c -= rol32(b, 24);		\
}

static inline u32 __jhash_nwords(u32 a, u32 b, u32 c, u32 initval)
{
	a += initval;
	b += initval;
	c += initval;

	__jhash_final(a, b, c);

	return c;
}

static inline u32 jhash_3words(u32 a, u32 b, u32 c, u32 initval)
{
	return __jhash_nwords(a, b, c, initval + JHASH_INITVAL + (3 << 2));
}

static inline u32 jhash_2words(u32 a, u32 b, u32 initval)
{
	return __jhash_nwords(a, b, 0, initval + JHASH_INITVAL + (2 << 2));
}

static inline u32 jhash_1word(u32 a, u32 initval)
{
	return __jhash_nwords(a, 0, 0, initval + JHASH_INITVAL + (1 << 2));
}

#define __jhash_mix(a, b, c)			\
{						\
	a -= c;  a ^= rol32(c, 4);  c += b;	\
	b -= a;  b ^= rol32(a, 6);  a += c;	\
	c -= b;  c ^= rol32(b, 8);  b += a;	\
	a -= c;  a ^= rol32(c, 16); c += b;	\
	b -= a;  b ^= rol32(a, 19); a += c;	\
	c -= b;  c ^= rol32(b, 4);  b += a;	\
}

/* include/asm-generic/unaligned.h: a load in the CPU's byte order. */
static inline u32 __get_unaligned_cpu32(const void *p)
{
	u32 v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline u32 jhash(const void *key, u32 length, u32 initval)
{
	u32 a, b, c;
	const unsigned char *k = key;

	/* Set up the internal state */
	a = b = c = JHASH_INITVAL + length + initval;

	/* All but the last block: affect some 32 bits of (a,b,c) */
	while (length > 12) {
		a += __get_unaligned_cpu32(k);
		b += __get_unaligned_cpu32(k + 4);
		c += __get_unaligned_cpu32(k + 8);
		__jhash_mix(a, b, c);
		length -= 12;
		k += 12;
	}
	/* Last block: affect all 32 bits of (c) */
	switch (length) {
	case 12: c += (u32)k[11]<<24;	/* fall through */
	case 11: c += (u32)k[10]<<16;	/* fall through */
	case 10: c += (u32)k[9]<<8;	/* fall through */
	case 9:  c += k[8];		/* fall through */
	case 8:  b += (u32)k[7]<<24;	/* fall through */
	case 7:  b += (u32)k[6]<<16;	/* fall through */
	case 6:  b += (u32)k[5]<<8;	/* fall through */
	case 5:  b += k[4];		/* fall through */
	case 4:  a += (u32)k[3]<<24;	/* fall through */
	case 3:  a += (u32)k[2]<<16;	/* fall through */
	case 2:  a += (u32)k[1]<<8;	/* fall through */
	case 1:  a += k[0];
		 __jhash_final(a, b, c);
		 break;
	case 0: /* Nothing left to add */
		break;
	}

	return c;
}

/* include/linux/math.h (formerly kernel.h) */
static inline u32 reciprocal_scale(u32 val, u32 ep_ro)
{
	return (u32)(((u64) val * ep_ro) >> 32);
}

/* include/uapi/linux/netfilter_ipv4/ipt_CLUSTERIP.h */
enum clusterip_hashmode {
	CLUSTERIP_HASHMODE_SIP = 0,
	CLUSTERIP_HASHMODE_SIP_SPT,
	CLUSTERIP_HASHMODE_SIP_SPT_DPT,
};

struct clusterip_config {
	u16 num_total_nodes;
	enum clusterip_hashmode hash_mode;
	u32 hash_initval;
};

/*
 * clusterip_hashfn with the skb replaced by the values it extracts:
 * ntohl(iph->saddr) and the two native u16 port fields.
 */
static u32 clusterip_hashfn(u32 saddr_host, u16 sport, u16 dport,
			    const struct clusterip_config *config,
			    u32 *hashout)
{
	unsigned long hashval;

	switch (config->hash_mode) {
	case CLUSTERIP_HASHMODE_SIP:
		hashval = jhash_1word(saddr_host, config->hash_initval);
		break;
	case CLUSTERIP_HASHMODE_SIP_SPT:
		hashval = jhash_2words(saddr_host, sport, config->hash_initval);
		break;
	case CLUSTERIP_HASHMODE_SIP_SPT_DPT:
		hashval = jhash_3words(saddr_host, sport, dport,
				       config->hash_initval);
		break;
	default:
		fprintf(stderr, "unknown mode %u\n", config->hash_mode);
		exit(2);
	}

	*hashout = hashval;
	/* node numbers are 1..n, not 0..n */
	return reciprocal_scale(hashval, config->num_total_nodes) + 1;
}

/* lookup3.c, Bob Jenkins, May 2006, Public Domain. */
#define rot(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

#define final(a, b, c) \
{ \
	c ^= b; c -= rot(b, 14); \
	a ^= c; a -= rot(c, 11); \
	b ^= a; b -= rot(a, 25); \
	c ^= b; c -= rot(b, 16); \
	a ^= c; a -= rot(c, 4);  \
	b ^= a; b -= rot(a, 14); \
	c ^= b; c -= rot(b, 24); \
}

static u32 hashword(const u32 *k, size_t length, u32 initval)
{
	u32 a, b, c;

	a = b = c = 0xdeadbeef + (((u32)length) << 2) + initval;
	/* length is 1..3 here, so lookup3's mix() loop never runs. */
	switch (length) {
	case 3: c += k[2]; /* fall through */
	case 2: b += k[1]; /* fall through */
	case 1: a += k[0];
		final(a, b, c);
	case 0:
		break;
	}
	return c;
}

#define mix(a, b, c) \
{ \
	a -= c; a ^= rot(c, 4);  c += b; \
	b -= a; b ^= rot(a, 6);  a += c; \
	c -= b; c ^= rot(b, 8);  b += a; \
	a -= c; a ^= rot(c, 16); c += b; \
	b -= a; b ^= rot(a, 19); a += c; \
	c -= b; c ^= rot(b, 4);  b += a; \
}

/* hashlittle(), the path lookup3 takes for keys of unknown alignment. */
static u32 hashlittle(const void *key, size_t length, u32 initval)
{
	u32 a, b, c;
	const uint8_t *k = key;

	a = b = c = 0xdeadbeef + ((u32)length) + initval;
	while (length > 12) {
		a += k[0];
		a += ((u32)k[1])<<8;
		a += ((u32)k[2])<<16;
		a += ((u32)k[3])<<24;
		b += k[4];
		b += ((u32)k[5])<<8;
		b += ((u32)k[6])<<16;
		b += ((u32)k[7])<<24;
		c += k[8];
		c += ((u32)k[9])<<8;
		c += ((u32)k[10])<<16;
		c += ((u32)k[11])<<24;
		mix(a, b, c);
		length -= 12;
		k += 12;
	}
	switch (length) {
	case 12: c += ((u32)k[11])<<24; /* fall through */
	case 11: c += ((u32)k[10])<<16; /* fall through */
	case 10: c += ((u32)k[9])<<8;   /* fall through */
	case 9:  c += k[8];             /* fall through */
	case 8:  b += ((u32)k[7])<<24;  /* fall through */
	case 7:  b += ((u32)k[6])<<16;  /* fall through */
	case 6:  b += ((u32)k[5])<<8;   /* fall through */
	case 5:  b += k[4];             /* fall through */
	case 4:  a += ((u32)k[3])<<24;  /* fall through */
	case 3:  a += ((u32)k[2])<<16;  /* fall through */
	case 2:  a += ((u32)k[1])<<8;   /* fall through */
	case 1:  a += k[0];
		break;
	case 0:
		return c;
	}
	final(a, b, c);
	return c;
}

/*
 * nft_jhash_eval for "jhash <saddr> [. th sport [. th dport]] mod total
 * seed seed offset 1": the concatenation's registers, each 4-byte padded,
 * hashed over their total length, then scaled and offset.
 */
static int nft_query(void)
{
	unsigned long mode, total, seed, sp, dp;
	char hex[40];
	unsigned char key[24];
	size_t alen, len, i;
	u32 hash, check, node;
	int n;

	n = scanf("%lu %lu %lu %39s %lu %lu", &mode, &total, &seed, hex, &sp,
		  &dp);
	if (n == EOF)
		return 0;
	if (n != 6 || mode > 2 || total < 1 || (strlen(hex) != 8 &&
	    strlen(hex) != 32) || sp > 0xffff || dp > 0xffff) {
		fprintf(stderr, "malformed input\n");
		exit(1);
	}
	alen = strlen(hex) / 2;
	for (i = 0; i < alen; i++) {
		unsigned int byte;

		if (sscanf(hex + 2 * i, "%2x", &byte) != 1) {
			fprintf(stderr, "malformed address %s\n", hex);
			exit(1);
		}
		key[i] = byte;
	}
	len = alen;
	/* nft_payload_eval zeroes a register before a 2-byte load. */
	if (mode >= 1) {
		unsigned char reg[4] = { sp >> 8, sp & 0xff, 0, 0 };

		memcpy(key + len, reg, 4);
		len += 4;
	}
	if (mode >= 2) {
		unsigned char reg[4] = { dp >> 8, dp & 0xff, 0, 0 };

		memcpy(key + len, reg, 4);
		len += 4;
	}

	hash = jhash(key, len, seed);
	check = hashlittle(key, len, seed);
	if (check != hash) {
		fprintf(stderr, "jhash %u != lookup3 hashlittle %u\n", hash,
			check);
		exit(3);
	}
	node = reciprocal_scale(hash, total) + 1;
	printf("%u %u\n", node, hash);
	return 1;
}

int main(int argc, char **argv)
{
	int ports = argc > 1 && strcmp(argv[1], "-ports") == 0;
	unsigned long mode, total, seed, ip, sp, dp;

	if (argc > 1 && strcmp(argv[1], "-nft") == 0) {
		while (nft_query())
			;
		return 0;
	}

	while (scanf("%lu %lu %lu %lu %lu %lu", &mode, &total, &seed, &ip,
		     &sp, &dp) == 6) {
		struct clusterip_config config = {
			.num_total_nodes = total,
			.hash_mode = mode,
			.hash_initval = seed,
		};
		u16 ports_native[2] = { sp, dp };
		u32 words[3], hash, check, node;

		if (ports) {
			/* Big-endian on the wire, as in a TCP header. */
			unsigned char wire[4] = {
				sp >> 8, sp & 0xff, dp >> 8, dp & 0xff,
			};
			memcpy(ports_native, wire, sizeof(wire));
		}

		node = clusterip_hashfn(ip, ports_native[0], ports_native[1],
					&config, &hash);

		words[0] = ip;
		words[1] = ports_native[0];
		words[2] = ports_native[1];
		check = hashword(words, mode + 1, seed);
		if (check != hash) {
			fprintf(stderr, "jhash %u != lookup3 hashword %u\n",
				hash, check);
			return 3;
		}

		printf("%u %u\n", node, hash);
	}
	if (!feof(stdin)) {
		fprintf(stderr, "malformed input\n");
		return 1;
	}
	return 0;
}
