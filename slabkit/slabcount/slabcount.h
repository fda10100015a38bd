/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What slabcount.bpf.c (the BPF program) and slabcount.c (its loader, which reads the maps)
 * must agree on: map keys and values, and the order of the stats. One copy, included by both.
 */
#ifndef SLABCOUNT_H
#define SLABCOUNT_H

#define MAX_DEPTH 127
#define COMM_LEN 16

/* what one count is kept per */
struct key {
	__u32 pid;
	__u32 tid;
	__u64 cgroup;
	char comm[COMM_LEN];
	__u64 call_site;        /* the allocation tracepoint's call_site: the caller's address */
};

struct value {
	__u64 count;            /* samples: the weight */
	__u64 bytes_req;
	__u64 samples;          /* counts: stack samples the key had on this CPU (the rate) */
};

struct stack_key {
	struct key who;
	__u64 stack;            /* KSTACK_ID | kstacks id, or the program's hash of the frames */
};

struct stack {
	__u32 depth;
	__u32 pad;
	__u64 ip[MAX_DEPTH];
};

/* One CPU's last key and what it counted since that key became the last one. */
struct last {
	struct key key;         /* valid when primed */
	__u64 comm0, comm1;     /* key.comm as two words: the cheap compare */
	__u64 count;            /* pending: not yet in `counts` */
	__u64 bytes_req;
	__u32 countdown;        /* events until the next stack sample */
	__u32 primed;           /* key is set */
	__u32 every;            /* mean gap between samples now: stack_every, or hot_every */
	__u32 key_samples;      /* stack samples this key has had on this CPU */
	__u32 busy;             /* an update is under way (see count_as) */
	__u32 pad;
	__u64 launder;          /* a kernel pointer stored and read back as a plain number */
};

/* The order of the `stats` array, and the names slabcount prints for it. */
enum slabcount_stat {
	STAT_COUNT_FULL,        /* counts map full: events NOT counted */
	STAT_STACK_FAILED,      /* bpf_get_stack failed: the sample has no stack */
	STAT_STACK_FULL,        /* stacks map full */
	STAT_SAMPLE_FULL,       /* samples map full: the sample was dropped */
	STAT_FILTERED_OUT,      /* the cache's events the pid/comm filter turned away */
	STAT_NESTED_LOST,       /* the cache's events that came while this CPU's count was
				 * being updated (an interrupt's): NOT counted */
	STAT_N,
};
#define STAT_NAMES { "count_map_full", "stack_failed", "stack_map_full", "sample_map_full", \
		    "filtered_out", "nested_lost" }

#define KSTACK_ID (1ULL << 63)  /* stack ids from the kernel's stack map */

#endif
