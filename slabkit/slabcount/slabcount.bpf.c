// SPDX-License-Identifier: GPL-2.0
/*
 * slabkit's in-kernel counter: one BPF program on the *raw* allocation tracepoint.
 *
 * Why raw: on a regular tracepoint the kernel builds the whole event record (the cache name
 * copied as a string) for every allocation of every cache before a program sees it. A raw
 * tracepoint hands the program the tracepoint's own arguments, so the cache test is one
 * pointer compare (the `struct kmem_cache *` is learnt once, by name, through BTF/CO-RE).
 *
 * Per matching event: one per-CPU hash update keyed by (pid, tid, cgroup, comm): exact counts,
 * no locks. A kernel stack is taken for the first event of each key and then for 1 event in
 * `stack_every` (random), weighted so that per-stack counts are estimates whose per-key sums
 * are exact (user space spreads each exact count over its stacks). With `stack_every` 1
 * (full stacks) every event updates only the per-CPU (key, stack) map, which then holds the
 * exact counts.
 *
 * Stacks go to the kernel's stack map (bpf_get_stackid without BPF_F_REUSE_STACKID, so a
 * bucket is never silently overwritten by another stack); a stack whose bucket is taken is
 * copied out and hashed here (64-bit) instead. Everything that could not be recorded is
 * counted in `stats` and reported.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define MAX_DEPTH 127
#define NAME_MAX_LEN 64
#define COMM_LEN 16

struct kmem_cache {
	const char *name;
} __attribute__((preserve_access_index));

/* Set by the loader before load (read-only afterwards: the verifier prunes dead branches). */
const volatile __u32 cache_arg = 2;      /* raw tp argument holding struct kmem_cache * */
const volatile __u32 size_arg = 3;       /* kmalloc: bytes_alloc */
const volatile __u32 req_arg = 2;        /* kmalloc: bytes_req */
const volatile __u32 gfp_arg = 4;        /* kmalloc: gfp_flags */
const volatile __u64 match_size = 0;
const volatile __u64 gfp_require = 0;
const volatile __u64 gfp_forbid = 0;
const volatile __u32 filter_pid = 0;     /* 0: every process */
const volatile __u32 filter_comm = 0;    /* 1: only comm == comm_value */
const volatile char comm_value[COMM_LEN] = {};
const volatile char cache_name[NAME_MAX_LEN] = {};
const volatile __u32 cache_name_len = 0; /* without the NUL */
const volatile __u32 stack_every = 32;   /* 1: a stack for every event */

/* The matching cache once seen (one name may belong to several caches: each is checked). */
__u64 known_cache = 0;
/* The program ran at least once (any cache's event): a capture that counted nothing can say
 * whether its probe fired at all. Read before it is written, so the line stays shared. */
__u64 fired = 0;

struct key {
	__u32 pid;
	__u32 tid;
	__u64 cgroup;
	char comm[COMM_LEN];
};

struct value {
	__u64 count;
	__u64 bytes_req;
};

struct stack_key {
	struct key who;
	__u64 stack;            /* KSTACK_ID | kstacks id, or our hash of the frames; 0: none */
};

struct stack {
	__u32 depth;
	__u32 pad;
	__u64 ip[MAX_DEPTH];
};

enum stat {
	STAT_COUNT_FULL,        /* counts map full: event NOT counted */
	STAT_STACK_FAILED,      /* bpf_get_stack failed: the sample has no stack */
	STAT_STACK_FULL,        /* stacks map full */
	STAT_SAMPLE_FULL,       /* samples map full: the sample was dropped */
	STAT_CACHES_FULL,       /* verdict map full: names compared again */
	STAT_FILTERED_OUT,      /* the cache's events the pid/comm filter turned away */
	STAT_N,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, struct value);
} counts SEC(".maps");

/* weight (events this sample stands for) and requested bytes, per (key, stack): per-CPU, so
 * no atomics; in full-stack mode (stack_every == 1) these are the exact counts */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stack_key);
	__type(value, struct value);
} samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct stack);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack);
} scratch SEC(".maps");

/* The kernel's own stack map: bpf_get_stackid hashes and stores a stack in C, cheaper than
 * copying it out and hashing it here. Ids from it are marked with the top bit; a stack whose
 * bucket holds another one (-EEXIST: two stacks, one slot) takes the copy-and-hash path. */
#define KSTACK_ID (1ULL << 63)
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_N);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void bump(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += 1;
}

/* Is this struct kmem_cache * the one we want? Learnt by name once per pointer. */
static __always_inline int is_target(__u64 s)
{
	if (s == known_cache)
		return 1;
	__u8 *seen = bpf_map_lookup_elem(&verdicts, &s);
	if (seen)
		return *seen;
	char name[NAME_MAX_LEN] = {};
	const char *p = BPF_CORE_READ((struct kmem_cache *)s, name);
	__u8 ok = 0;
	if (bpf_probe_read_kernel_str(name, sizeof(name), p) == (long)cache_name_len + 1) {
		ok = 1;
		for (int i = 0; i < NAME_MAX_LEN; i++) {
			if (i >= cache_name_len)
				break;
			if (name[i] != cache_name[i]) {
				ok = 0;
				break;
			}
		}
	}
	if (ok && known_cache == 0)
		known_cache = s;
	if (bpf_map_update_elem(&verdicts, &s, &ok, BPF_NOEXIST) == -7 /* E2BIG */)
		bump(STAT_CACHES_FULL);
	return ok;
}

/* Add to an existing (key, stack) sample; 0 when there is none yet. */
static __always_inline int add_to_sample(struct stack_key *sk, __u64 weight, __u64 bytes_req)
{
	struct value *w = bpf_map_lookup_elem(&samples, sk);
	if (!w)
		return 0;
	w->count += weight;
	w->bytes_req += bytes_req;
	return 1;
}

static __always_inline void new_sample(struct stack_key *sk, __u64 weight, __u64 bytes_req)
{
	struct value nv = { .count = weight, .bytes_req = bytes_req };
	if (bpf_map_update_elem(&samples, sk, &nv, BPF_NOEXIST) == 0)
		return;
	if (add_to_sample(sk, weight, bytes_req))   /* another CPU inserted it first */
		return;
	/* full-stack mode counts here: a lost sample is a lost event */
	bump(stack_every == 1 ? STAT_COUNT_FULL : STAT_SAMPLE_FULL);
}

static __always_inline void take_stack(void *ctx, struct key *who, __u64 weight,
				       __u64 bytes_req)
{
	struct stack_key sk = { .who = *who, .stack = 0 };
	long id = bpf_get_stackid(ctx, &kstacks, 0);
	if (id >= 0) {
		sk.stack = KSTACK_ID | (__u64)id;
		if (!add_to_sample(&sk, weight, bytes_req))
			new_sample(&sk, weight, bytes_req);
		return;
	}
	/* the kernel map's bucket holds another stack: copy this one out and hash it here */
	__u32 zero = 0;
	struct stack *st = bpf_map_lookup_elem(&scratch, &zero);
	if (!st)
		return;
	long n = bpf_get_stack(ctx, st->ip, sizeof(st->ip), 0);
	if (n <= 0) {
		bump(STAT_STACK_FAILED);
	} else {
		__u32 depth = n / 8;
		__u64 h = 0xcbf29ce484222325ULL;
		for (__u32 i = 0; i < MAX_DEPTH; i++) {
			if (i >= depth)
				break;
			h = (h ^ st->ip[i]) * 0x100000001b3ULL;
		}
		h = (h & ~KSTACK_ID) | 1;       /* 0: no stack; top bit: a kstacks id */
		sk.stack = h;
	}
	if (add_to_sample(&sk, weight, bytes_req))
		return;                 /* seen before by this key: its stack is stored already */
	if (sk.stack && !bpf_map_lookup_elem(&stacks, &sk.stack)) {
		st->depth = (__u32)n / 8;
		if (bpf_map_update_elem(&stacks, &sk.stack, st, BPF_NOEXIST) == -7)
			bump(STAT_STACK_FULL);
	}
	new_sample(&sk, weight, bytes_req);
}

static __always_inline int count(void *ctx, __u64 bytes_req)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct key k = {};
	k.pid = pid_tgid >> 32;
	if (filter_pid && k.pid != filter_pid) {
		bump(STAT_FILTERED_OUT);
		return 0;
	}
	k.tid = (__u32)pid_tgid;
	bpf_get_current_comm(k.comm, sizeof(k.comm));
	if (filter_comm) {
		int differs = 0;
		for (int i = 0; i < COMM_LEN; i++) {
			if (k.comm[i] != comm_value[i]) {
				differs = 1;
				break;
			}
			if (!k.comm[i])
				break;
		}
		if (differs) {
			bump(STAT_FILTERED_OUT);
			return 0;
		}
	}
	k.cgroup = bpf_get_current_cgroup_id();
	if (stack_every == 1) {         /* full-stack mode: the samples are the counts */
		take_stack(ctx, &k, 1, bytes_req);
		return 0;
	}

	struct value *v = bpf_map_lookup_elem(&counts, &k);
	if (v) {
		v->count += 1;
		v->bytes_req += bytes_req;
		if (bpf_get_prandom_u32() % stack_every == 0)
			take_stack(ctx, &k, stack_every, 0);
		return 0;
	}
	struct value nv = { .count = 1, .bytes_req = bytes_req };
	if (bpf_map_update_elem(&counts, &k, &nv, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&counts, &k);    /* another CPU inserted it first */
		if (!v) {
			bump(STAT_COUNT_FULL);
			return 0;
		}
		v->count += 1;
		v->bytes_req += bytes_req;
		return 0;
	}
	take_stack(ctx, &k, 1, 0);   /* the key's first event: every thread gets a stack */
	return 0;
}

/*
 * Raw tracepoint arguments are read at constant offsets, all of them first: the verifier
 * refuses a context access at a computed offset, and reading past the tracepoint's last
 * argument would fail at attach time (kmem_cache_alloc has at least 4 since 6.0, kmalloc 5).
 */
static __always_inline __u64 pick(__u32 i, __u64 a0, __u64 a1, __u64 a2, __u64 a3, __u64 a4)
{
	switch (i) {
	case 0: return a0;
	case 1: return a1;
	case 2: return a2;
	case 3: return a3;
	default: return a4;
	}
}

SEC("raw_tp/kmem_cache_alloc")
int on_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 a2 = ctx->args[2], a3 = ctx->args[3];
	__u64 s = cache_arg == 3 ? a3 : a2;
	if (!fired)
		fired = 1;
	if (!is_target(s))
		return 0;
	return count(ctx, 0);
}

/* One kmalloc event: the size class and GFP tests, then count it. */
static __always_inline int kmalloc_event(void *ctx, __u64 bytes_alloc, __u64 gfp,
					 __u64 bytes_req)
{
	if (bytes_alloc != match_size)
		return 0;
	if (gfp_require && !(gfp & gfp_require))
		return 0;
	if (gfp & gfp_forbid)
		return 0;
	return count(ctx, bytes_req);
}

SEC("raw_tp/kmalloc")
int on_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 a0 = ctx->args[0], a1 = ctx->args[1], a2 = ctx->args[2], a3 = ctx->args[3],
	      a4 = ctx->args[4];
	if (!fired)
		fired = 1;
	return kmalloc_event(ctx, pick(size_arg, a0, a1, a2, a3, a4),
			     pick(gfp_arg, a0, a1, a2, a3, a4), pick(req_arg, a0, a1, a2, a3, a4));
}

/*
 * The same test on kmalloc's *regular* tracepoint, which hands over the event record the
 * kernel built (fields found by name through CO-RE). Used for full stacks only: there the
 * stack walk dominates, and from a regular tracepoint it starts in perf_trace_kmalloc,
 * frames shallower than from the raw one (the BPF program, bpf_trace_runN, __bpf_trace_*).
 */
struct trace_event_raw_kmalloc {
	__u64 bytes_req;
	__u64 bytes_alloc;
	unsigned long gfp_flags;
} __attribute__((preserve_access_index));

SEC("tp/kmem/kmalloc")
int on_kmalloc_record(struct trace_event_raw_kmalloc *ctx)
{
	if (!fired)
		fired = 1;
	return kmalloc_event(ctx, ctx->bytes_alloc, ctx->gfp_flags, ctx->bytes_req);
}

char LICENSE[] SEC("license") = "GPL";
