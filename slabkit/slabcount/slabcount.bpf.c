// SPDX-License-Identifier: GPL-2.0
/*
 * slabkit's in-kernel counter: one BPF program on the *raw* allocation tracepoint.
 *
 * Why raw: on a regular tracepoint the kernel builds the whole event record (the cache name
 * copied as a string) for every allocation of every cache before a program sees it. A raw
 * tracepoint hands the program the tracepoint's own arguments, so the cache test is one
 * pointer compare (the `struct kmem_cache *` is learnt once, by name, through BTF/CO-RE).
 *
 * Counts are exact per key = (pid, tid, cgroup, comm, call site): the call site is the
 * tracepoint's `call_site` argument (the allocator's caller's return address). Per matching
 * event the program reads the key straight from the current task (BTF pointers, no helper
 * copies) and compares it with the last key seen on this CPU: a hot thread adds to a per-CPU
 * pending count and never touches a hash map. When the key changes, the pending count is
 * added to the per-CPU hash `counts` and the new key becomes the CPU's last key; user space
 * adds what is still pending after detaching (`lasts`). A kernel stack is taken for each
 * key's first event and then for about 1 event in `stack_every` (a per-CPU countdown, redrawn
 * at random with that mean after each sample); once a key has had HOT_KEY_SAMPLES samples on
 * a CPU, 1 in `hot_every` there: a stack walk costs some 30 times a counted event, and a hot
 * key has stacks enough. Each sample weighs the mean gap it was drawn with, so per-stack
 * counts are unbiased estimates whose per-key sums are exact (user space spreads each exact
 * count over its stacks). With `stack_every` 1 (full stacks) every event updates only the
 * per-CPU (key, stack) map, which then holds the exact counts.
 *
 * kmalloc caches: the kmalloc tracepoints do not name the cache. By default the size class
 * and GFP bits select it (exact for plain kmalloc-N, an estimate where slab buckets or random
 * kmalloc copies share the size). With `--cache NAME` too, the object's own slab names it:
 * object address -> struct slab -> slab_cache, through the kernel's bpf_get_kmem_cache kfunc
 * (6.13+) or, on older kernels, the kernel's own virt_to_page arithmetic with its
 * page_offset_base/vmemmap_base read from the addresses the loader found in kallsyms. The
 * loader checks the lookup on live events (`--probe`) before anything relies on it.
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
#include "slabcount.h"

#define NAME_MAX_LEN 64

struct kmem_cache {
	const char *name;
} __attribute__((preserve_access_index));

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

/* The object's own slab (kernels without bpf_get_kmem_cache): page -> its head -> slab_cache */
struct page {
	unsigned long compound_head;     /* a tail page's head | 1 */
} __attribute__((preserve_access_index));

struct slab {
	struct kmem_cache *slab_cache;
} __attribute__((preserve_access_index));

/* 6.13+: the kernel's own object -> cache lookup (NULL for an address not in a slab) */
extern struct kmem_cache *bpf_get_kmem_cache(__u64 addr) __ksym __weak;

struct task_struct {
	int pid;
	int tgid;
	char comm[COMM_LEN];
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

/* Set by the loader before load (read-only afterwards: the verifier prunes dead branches). */
const volatile __u32 cache_arg = 2;      /* raw tp argument holding struct kmem_cache * */
const volatile __u32 size_arg = 3;       /* kmalloc: bytes_alloc */
const volatile __u32 req_arg = 2;        /* kmalloc: bytes_req */
const volatile __u32 gfp_arg = 4;        /* kmalloc: gfp_flags */
const volatile __u32 ptr_arg = 1;        /* kmalloc: the object's address */
const volatile __u64 match_size = 0;
const volatile __u64 gfp_require = 0;
const volatile __u64 gfp_forbid = 0;
const volatile __u32 filter_pid = 0;     /* 0: every process */
const volatile __u32 filter_comm = 0;    /* 1: only comm == comm_value */
const volatile char comm_value[COMM_LEN] __attribute__((aligned(8))) = {};
const volatile char cache_name[NAME_MAX_LEN] = {};
const volatile __u32 cache_name_len = 0; /* without the NUL */
const volatile __u32 stack_every = 32;   /* 1: a stack for every event */
const volatile __u32 walk_bytes = MAX_DEPTH * 8;   /* deepest stack walked, in bytes */
/* frames to skip at the inner end of a stack: 1 on a raw tracepoint, where the first frame is
 * this program at the place it asked for the stack (one stack would get an id per place);
 * 0 on a regular tracepoint, whose stacks start in the traced function */
const volatile __u32 own_frames = 1;
/* once one key has had HOT_KEY_SAMPLES samples on one CPU, 1 in hot_every there */
const volatile __u32 hot_every = 256;
#define HOT_KEY_SAMPLES 128
/* finding the object's slab without the kfunc: the kernel's virt_to_page, where
 * (addr - page_offset_base) >> page_shift indexes the struct page array at vmemmap_base,
 * both read from the kallsyms addresses the loader found */
const volatile __u64 page_offset_base_addr = 0;
const volatile __u64 vmemmap_base_addr = 0;
const volatile __u32 page_shift = 12;

/* The matching cache once seen (one name may belong to several caches: each is checked). */
__u64 known_cache = 0;
/* The program ran at least once (any cache's event): a capture that counted nothing can say
 * whether its probe fired at all. Read before it is written, so the line stays shared. */
__u64 fired = 0;

static __always_inline void note_fired(void)
{
	if (!fired)
		fired = 1;
}

/* page_offset_base and vmemmap_base, read once */
__u64 direct_map_base = 0;
__u64 page_array_base = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, struct value);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct last);
} lasts SEC(".maps");

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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack);
} scratch SEC(".maps");

/* The kernel's own stack map: bpf_get_stackid hashes and stores a stack in C, cheaper than
 * copying it out and hashing it here. Ids from it are marked with the top bit; a stack whose
 * bucket holds another one (-EEXIST: two stacks, one slot) takes the copy-and-hash path. */
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

static __always_inline void bump(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += n;
}

/*
 * Verdicts per struct kmem_cache *, in a direct-mapped table in global data: one load and
 * compare per event of another cache (a hash map lookup there cost more than the rest of the
 * program). A slot holds the pointer with bit 0 set when it is the target (kmem_cache
 * pointers are 8-aligned); two caches that share a slot take turns, each re-learnt by name.
 */
#define VERDICT_SLOTS 1024
__u64 verdicts[VERDICT_SLOTS];

static __always_inline __u32 verdict_slot(__u64 s)
{
	return (__u32)((s * 0x9E3779B97F4A7C15ULL) >> 54) & (VERDICT_SLOTS - 1);
}

/* Is this struct kmem_cache * the one we want? Learnt by name once per pointer. */
static __always_inline int is_target(__u64 s)
{
	if (s == known_cache)
		return 1;
	__u32 i = verdict_slot(s);
	__u64 v = verdicts[i];
	if ((v & ~1ULL) == s)
		return v & 1;
	if (!s)
		return 0;
	char name[NAME_MAX_LEN] = {};
	const char *p = BPF_CORE_READ((struct kmem_cache *)s, name);
	__u8 ok = 0;
	if (bpf_probe_read_kernel_str(name, sizeof(name), p) == (long)cache_name_len + 1) {
		ok = 1;
		for (int j = 0; j < NAME_MAX_LEN; j++) {
			if (j >= cache_name_len)
				break;
			if (name[j] != cache_name[j]) {
				ok = 0;
				break;
			}
		}
	}
	if (ok && known_cache == 0)
		known_cache = s;
	verdicts[i] = s | ok;
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
	bump(stack_every == 1 ? STAT_COUNT_FULL : STAT_SAMPLE_FULL, weight);
}

static __always_inline void take_stack(void *ctx, struct key *who, __u64 weight,
				       __u64 bytes_req)
{
	struct stack_key sk = { .who = *who, .stack = 0 };
	long id = bpf_get_stackid(ctx, &kstacks, own_frames);
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
	long n = bpf_get_stack(ctx, st->ip, walk_bytes & 0x3f8, own_frames);
	if (n <= 0) {
		bump(STAT_STACK_FAILED, 1);
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
		if (bpf_map_update_elem(&stacks, &sk.stack, st, BPF_NOEXIST) == -7 /* E2BIG */)
			bump(STAT_STACK_FULL, 1);
	}
	new_sample(&sk, weight, bytes_req);
}

/* Add n events to key k in `counts`, and say it has had `samples` stack samples on this CPU;
 * 0 when the map had no room (the events are lost). */
static __always_inline int add_count(struct key *k, __u64 n, __u64 bytes_req, __u64 samples)
{
	struct value *v = bpf_map_lookup_elem(&counts, k);
	if (!v) {
		struct value nv = { .count = n, .bytes_req = bytes_req, .samples = samples };
		if (bpf_map_update_elem(&counts, k, &nv, BPF_NOEXIST) == 0)
			return 1;
		v = bpf_map_lookup_elem(&counts, k);    /* another CPU inserted it first */
		if (!v)
			return 0;
	}
	v->count += n;
	v->bytes_req += bytes_req;
	v->samples = samples;
	return 1;
}

/* Events until the next stack sample: uniform on [1, 2 * every - 1] (mean `every`), so a
 * periodic workload cannot line up with it. */
static __always_inline __u32 next_countdown(__u32 every)
{
	return 1 + bpf_get_prandom_u32() % (2 * every - 1);
}

/* Count down to the CPU's next stack sample; at 0, sample (weighted by the mean gap it was
 * drawn with: each event's expected weight is 1). Every event of a key already seen ticks,
 * whether its key was the CPU's last one or not (keys that alternate on a CPU keep being
 * sampled). */
static __always_inline void tick(void *ctx, struct last *l)
{
	if (--l->countdown == 0) {
		take_stack(ctx, &l->key, l->every, 0);
		if (++l->key_samples == HOT_KEY_SAMPLES)
			l->every = hot_every;
		l->countdown = next_countdown(l->every);
	}
}

/* A comm as the kernel holds it may keep bytes of an older name after its NUL (kernels
 * before 5.17 copied names without padding): only the bytes up to the NUL are the name. */
static __always_inline void comm_clean(__u64 *comm0, __u64 *comm1)
{
	char c[COMM_LEN] __attribute__((aligned(8)));
	*(__u64 *)&c[0] = *comm0;
	*(__u64 *)&c[8] = *comm1;
	int ended = 0;
	for (int i = 0; i < COMM_LEN; i++) {
		if (ended)
			c[i] = 0;
		else if (!c[i])
			ended = 1;
	}
	*comm0 = *(__u64 *)&c[0];
	*comm1 = *(__u64 *)&c[8];
}

static __always_inline int count_in(void *ctx, struct last *l, __u32 tgid, __u32 tid,
				    __u64 comm0, __u64 comm1, __u64 cgroup, __u64 call_site,
				    __u64 bytes_req)
{
	/* the CPU's last key again: only keys that passed the filters are ever the last key
	 * (compared with the comm as read; the key holds it cleaned) */
	if (stack_every != 1 && l->primed && l->key.tid == tid && l->key.call_site == call_site &&
	    l->comm0 == comm0 && l->comm1 == comm1 && l->key.cgroup == cgroup &&
	    l->key.pid == tgid) {
		l->count += 1;
		l->bytes_req += bytes_req;
		tick(ctx, l);
		return 0;
	}
	/* filtered events never become the last key, so they always come this way */
	if (filter_pid && tgid != filter_pid) {
		bump(STAT_FILTERED_OUT, 1);
		return 0;
	}
	__u64 raw0 = comm0, raw1 = comm1;
	comm_clean(&comm0, &comm1);
	if (filter_comm && (comm0 != *(const volatile __u64 *)&comm_value[0] ||
			    comm1 != *(const volatile __u64 *)&comm_value[8])) {
		bump(STAT_FILTERED_OUT, 1);
		return 0;
	}
	if (stack_every == 1) {         /* full-stack mode: the samples are the counts */
		struct key k = { .pid = tgid, .tid = tid, .cgroup = cgroup, .call_site = call_site };
		*(__u64 *)&k.comm[0] = comm0;
		*(__u64 *)&k.comm[8] = comm1;
		take_stack(ctx, &k, 1, bytes_req);
		return 0;
	}
	/* another key on this CPU: the last one's pending events go to the map */
	if (l->count) {
		if (!add_count(&l->key, l->count, l->bytes_req, l->key_samples))
			bump(STAT_COUNT_FULL, l->count);
		l->count = 0;
		l->bytes_req = 0;
	}
	l->key.pid = tgid;
	l->key.tid = tid;
	l->key.cgroup = cgroup;
	l->key.call_site = call_site;
	*(__u64 *)&l->key.comm[0] = comm0;
	*(__u64 *)&l->key.comm[8] = comm1;
	l->comm0 = raw0;
	l->comm1 = raw1;
	l->primed = 1;
	struct value *v = bpf_map_lookup_elem(&counts, &l->key);
	l->key_samples = v ? v->samples : 0;
	__u32 every = l->key_samples >= HOT_KEY_SAMPLES ? hot_every : stack_every;
	if (l->every != every || !l->countdown) {
		l->every = every;
		l->countdown = next_countdown(every);
	}
	if (v) {
		l->count = 1;
		l->bytes_req = bytes_req;
		tick(ctx, l);
		return 0;
	}
	/* the key's first event: it gets a stack, and the key a slot in the map */
	if (!add_count(&l->key, 1, bytes_req, 0)) {
		bump(STAT_COUNT_FULL, 1);
		return 0;
	}
	take_stack(ctx, &l->key, 1, 0);
	return 0;
}

/*
 * Count one event of the cache. The key is read straight from the task through BTF pointers
 * (`task_btf` 1, kernels with bpf_get_current_task_btf: 5.11+), or through the older helpers
 * that copy it (`task_btf` 0): the same values, some 20 ns slower. A constant at every call
 * site, so each program holds one way only and a kernel without the newer helper never sees
 * a call to it.
 *
 * The CPU's slot is marked busy meanwhile: an interrupt's allocation that runs the program
 * again on this CPU in the middle of an update (raw tracepoints had no recursion guard
 * before 6.1) is counted as lost rather than corrupting the pending count.
 */
static __always_inline int count_as(void *ctx, __u64 call_site, __u64 bytes_req, int task_btf)
{
	__u32 tgid, tid;
	__u64 comm0, comm1, cgroup;
	if (task_btf) {
		struct task_struct *task = bpf_get_current_task_btf();
		tgid = task->tgid;
		tid = task->pid;
		comm0 = *(__u64 *)&task->comm[0];
		comm1 = *(__u64 *)&task->comm[8];
		cgroup = task->cgroups->dfl_cgrp->kn->id;
	} else {
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		char comm[COMM_LEN] __attribute__((aligned(8))) = {};
		tgid = pid_tgid >> 32;
		tid = (__u32)pid_tgid;
		bpf_get_current_comm(comm, sizeof(comm));
		comm0 = *(__u64 *)&comm[0];
		comm1 = *(__u64 *)&comm[8];
		cgroup = bpf_get_current_cgroup_id();
	}
	__u32 zero = 0;
	struct last *l = bpf_map_lookup_elem(&lasts, &zero);
	if (!l)
		return 0;
	if (l->busy) {
		bump(STAT_NESTED_LOST, 1);
		return 0;
	}
	l->busy = 1;
	count_in(ctx, l, tgid, tid, comm0, comm1, cgroup, call_site, bytes_req);
	l->busy = 0;
	return 0;
}

static __always_inline int count(void *ctx, __u64 call_site, __u64 bytes_req)
{
	return count_as(ctx, call_site, bytes_req, 1);
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
	note_fired();
	if (!is_target(s))
		return 0;
	return count(ctx, ctx->args[0], 0);
}

/* One kmalloc event: the size class and GFP tests, then count it. */
static __always_inline int kmalloc_event_as(void *ctx, __u64 call_site, __u64 bytes_alloc,
					    __u64 gfp, __u64 bytes_req, int task_btf)
{
	if (bytes_alloc != match_size)
		return 0;
	if (gfp_require && !(gfp & gfp_require))
		return 0;
	if (gfp & gfp_forbid)
		return 0;
	return count_as(ctx, call_site, bytes_req, task_btf);
}

static __always_inline int kmalloc_event(void *ctx, __u64 call_site, __u64 bytes_alloc,
					 __u64 gfp, __u64 bytes_req)
{
	return kmalloc_event_as(ctx, call_site, bytes_alloc, gfp, bytes_req, 1);
}

/* The struct kmem_cache * the object at addr belongs to, by the kernel's own arithmetic;
 * 0 when it cannot be read. */
static __always_inline __u64 cache_by_page(__u64 addr)
{
	if (!page_array_base) {
		__u64 dm = 0, pa = 0;
		bpf_probe_read_kernel(&dm, sizeof(dm), (void *)page_offset_base_addr);
		bpf_probe_read_kernel(&pa, sizeof(pa), (void *)vmemmap_base_addr);
		direct_map_base = dm;
		page_array_base = pa;
	}
	if (addr < direct_map_base)
		return 0;
	__u64 pg = page_array_base +
		   ((addr - direct_map_base) >> page_shift) * bpf_core_type_size(struct page);
	__u64 head = BPF_CORE_READ((struct page *)pg, compound_head);
	if (head & 1)
		pg = head - 1;
	return (__u64)BPF_CORE_READ((struct slab *)pg, slab_cache);
}

/* The struct kmem_cache * of the object at addr, as a plain number (0: not in a slab), by
 * the kernel's kfunc or (by_kfunc 0: kernels without it) by cache_by_page. The programs
 * come in pairs, one per way, so that a kernel without the kfunc never sees a call to it. */
static __always_inline __u64 object_cache(__u64 addr, int by_kfunc)
{
	if (!by_kfunc)
		return cache_by_page(addr);
	__u32 zero = 0;
	struct last *l = bpf_map_lookup_elem(&lasts, &zero);
	if (!l)
		return 0;
	/* the kfunc returns a typed pointer, on which no arithmetic is allowed: the verdict
	 * table hashes it, so it goes through memory (this CPU's slot) to become a number */
	*(volatile __u64 *)&l->launder = (__u64)bpf_get_kmem_cache(addr);
	return *(volatile __u64 *)&l->launder;
}

SEC("raw_tp/kmalloc")
int on_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 a0 = ctx->args[0], a1 = ctx->args[1], a2 = ctx->args[2], a3 = ctx->args[3],
	      a4 = ctx->args[4];
	note_fired();
	return kmalloc_event(ctx, a0, pick(size_arg, a0, a1, a2, a3, a4),
			     pick(gfp_arg, a0, a1, a2, a3, a4), pick(req_arg, a0, a1, a2, a3, a4));
}

/* The same on kernels without bpf_get_current_task_btf (before 5.11). The loader attaches it
 * to kmalloc_node too where the kernel still has that tracepoint (before 6.1): the same first
 * five arguments, checked against BTF. */
SEC("raw_tp/kmalloc")
int on_kmalloc_compat(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 a0 = ctx->args[0], a1 = ctx->args[1], a2 = ctx->args[2], a3 = ctx->args[3],
	      a4 = ctx->args[4];
	note_fired();
	return kmalloc_event_as(ctx, a0, pick(size_arg, a0, a1, a2, a3, a4),
				pick(gfp_arg, a0, a1, a2, a3, a4),
				pick(req_arg, a0, a1, a2, a3, a4), 0);
}

/*
 * Kernels whose raw tracepoint does not pass the cache (before 6.0): a kprobe on each of the
 * plan's allocation functions (kmem_cache_alloc, kmem_cache_alloc_node, ...), whose first
 * argument is the cache. The call site is what the tracepoint would have passed, the
 * function's return address, on top of the stack at entry (x86-64). Stacks start in the
 * probed function (own_frames 0), as bpftrace's kprobe stacks do. A kprobe rather than
 * fentry: at a kprobe the return address is at the saved stack pointer on every kernel, while
 * in an fentry trampoline it sits at an offset that depends on the trampoline's layout (or
 * costs a stack walk per event), and exact call sites are part of the default capture.
 */
struct pt_regs {
	unsigned long di;
	unsigned long sp;
} __attribute__((preserve_access_index));

SEC("kprobe")
int on_cache_function(struct pt_regs *ctx)
{
	__u64 s = ctx->di, sp = ctx->sp, ret = 0;
	note_fired();
	if (!is_target(s))
		return 0;
	bpf_probe_read_kernel(&ret, sizeof(ret), (void *)sp);
	return count_as(ctx, ret, 0, 0);
}

/* kmalloc by the object's own slab: the size class first (an integer compare), then the
 * cache the slab names, learnt by name like a dedicated cache's (any GFP type, bucket or
 * random copy: the slab is the truth). */
static __always_inline int kmalloc_by_slab(struct bpf_raw_tracepoint_args *ctx, int by_kfunc)
{
	__u64 a0 = ctx->args[0], a1 = ctx->args[1], a2 = ctx->args[2], a3 = ctx->args[3],
	      a4 = ctx->args[4];
	note_fired();
	if (pick(size_arg, a0, a1, a2, a3, a4) != match_size)
		return 0;
	if (!is_target(object_cache(pick(ptr_arg, a0, a1, a2, a3, a4), by_kfunc)))
		return 0;
	return count(ctx, a0, pick(req_arg, a0, a1, a2, a3, a4));
}

SEC("raw_tp/kmalloc")
int on_kmalloc_kfunc(struct bpf_raw_tracepoint_args *ctx)
{
	return kmalloc_by_slab(ctx, 1);
}

SEC("raw_tp/kmalloc")
int on_kmalloc_page(struct bpf_raw_tracepoint_args *ctx)
{
	return kmalloc_by_slab(ctx, 0);
}

/* Does the object's slab lookup agree with the cache kmem_cache_alloc names? `--probe` runs
 * this on live events before anything relies on the lookup. */
__u64 lookup_agreed = 0;
__u64 lookup_differed = 0;

static __always_inline int check_lookup(struct bpf_raw_tracepoint_args *ctx, int by_kfunc)
{
	__u64 a1 = ctx->args[1], a2 = ctx->args[2], a3 = ctx->args[3];
	__u64 s = cache_arg == 3 ? a3 : a2;
	if (!a1)                /* ptr: a failed allocation */
		return 0;
	if (object_cache(a1, by_kfunc) == s)
		__sync_fetch_and_add(&lookup_agreed, 1);
	else
		__sync_fetch_and_add(&lookup_differed, 1);
	return 0;
}

SEC("raw_tp/kmem_cache_alloc")
int check_kfunc(struct bpf_raw_tracepoint_args *ctx)
{
	return check_lookup(ctx, 1);
}

SEC("raw_tp/kmem_cache_alloc")
int check_page(struct bpf_raw_tracepoint_args *ctx)
{
	return check_lookup(ctx, 0);
}

/*
 * The same test on kmalloc's *regular* tracepoint, which hands over the event record the
 * kernel built (fields found by name through CO-RE). Used for full stacks only: there the
 * stack walk dominates, and one from a regular tracepoint costs less (bench/, "walk": about
 * 150 ns of some 850 per event here), while kmalloc's record is small (no strings). Not for
 * kmem_cache_alloc, whose record carries the cache name: building it for every cache's
 * events cost more than the shorter walk saved.
 */
struct trace_event_raw_kmalloc {
	unsigned long call_site;
	const void *ptr;
	__u64 bytes_req;
	__u64 bytes_alloc;
	unsigned long gfp_flags;
} __attribute__((preserve_access_index));

SEC("tp/kmem/kmalloc")
int on_kmalloc_record(struct trace_event_raw_kmalloc *ctx)
{
	note_fired();
	return kmalloc_event(ctx, ctx->call_site, ctx->bytes_alloc, ctx->gfp_flags,
			     ctx->bytes_req);
}

/* ... and by the object's own slab, as on_kmalloc_kfunc/on_kmalloc_page */
static __always_inline int kmalloc_record_by_slab(struct trace_event_raw_kmalloc *ctx,
						  int by_kfunc)
{
	note_fired();
	if (ctx->bytes_alloc != match_size)
		return 0;
	if (!is_target(object_cache((__u64)ctx->ptr, by_kfunc)))
		return 0;
	return count(ctx, ctx->call_site, ctx->bytes_req);
}

SEC("tp/kmem/kmalloc")
int on_kmalloc_record_kfunc(struct trace_event_raw_kmalloc *ctx)
{
	return kmalloc_record_by_slab(ctx, 1);
}

SEC("tp/kmem/kmalloc")
int on_kmalloc_record_page(struct trace_event_raw_kmalloc *ctx)
{
	return kmalloc_record_by_slab(ctx, 0);
}

char LICENSE[] SEC("license") = "GPL";
