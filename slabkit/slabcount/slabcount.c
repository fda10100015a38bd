// SPDX-License-Identifier: GPL-2.0
/*
 * slabcount: load slabkit's BPF counter (slabcount.bpf.c), attach it to one raw allocation
 * tracepoint, print "slabkit-attached", wait for SIGINT/SIGTERM/SIGHUP, detach, then print
 * what the maps hold and exit. The probe lives only as long as this process: its links and
 * maps are file descriptors, closed by the kernel when the process ends in any way.
 *
 * Usage:
 *   slabcount --probe                      kernel facts (raw tracepoint argument indices)
 *   slabcount --cache NAME [options]       a cache by name (pointer learnt once)
 *   slabcount --cache NAME --functions F1,F2 [options]
 *            (kernels whose raw tracepoint has no cache pointer: kprobes on the allocation
 *            functions named, whose first argument is the cache)
 *   slabcount --kmalloc-size N [--gfp-require X] [--gfp-forbid Y] [--record-event] [options]
 *            (--record-event: the regular kmalloc tracepoint and its record, not the raw one:
 *            cheaper with --stack-every 1, where the stack walk starts fewer frames deep)
 * options: --pid P --comm C --stack-every N --hot-every M --count-keys K --sample-keys K
 *          --stack-keys K --kstack-keys K --max-depth D --no-task-btf
 *          (--stack-every N: a stack for each key's first event, then 1 in N; --hot-every M:
 *          1 in M once a key has had 128 samples on a CPU, default 8N;
 *          --kstack-keys: the kernel stack map; 1 forces most stacks down the hashed path;
 *          --max-depth D: walk at most D frames (from the tracing machinery's first one);
 *          --no-task-btf: read the key through the older helpers, as on kernels before 5.11,
 *          where kmalloc counting uses them: so that way is tested on newer kernels too)
 *
 * Output: tab-separated lines (see slabkit/backends/bpf.py); "end" last, so a cut-off
 * output is detected. comm is printed as hex (it may hold any byte but NUL).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include "slabcount.h"
#include "slabcount.skel.h"

static const char *stat_names[] = STAT_NAMES;

static void die(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "slabcount: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(code);
}

static int quiet_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

/* Name of the type behind typedefs/modifiers/pointers ("struct kmem_cache" -> "kmem_cache"). */
static const char *base_name(const struct btf *btf, __u32 id, int *is_ptr)
{
	const struct btf_type *t = btf__type_by_id(btf, id);
	*is_ptr = 0;
	while (t && (btf_is_mod(t) || btf_is_ptr(t))) {
		if (btf_is_ptr(t))
			*is_ptr = 1;
		t = btf__type_by_id(btf, t->type);
	}
	if (!t)
		return "";
	return btf__name_by_offset(btf, t->name_off);
}

/* The raw tracepoint's parameters (after the leading void *) from btf_trace_<tp>. */
static const struct btf_param *tp_params(const struct btf *btf, const char *tp, int *n)
{
	char name[128];
	snprintf(name, sizeof(name), "btf_trace_%s", tp);
	int id = btf__find_by_name_kind(btf, name, BTF_KIND_TYPEDEF);
	if (id < 0)
		return NULL;
	const struct btf_type *t = btf__type_by_id(btf, id);
	t = btf__type_by_id(btf, t->type);          /* pointer */
	if (!t || !btf_is_ptr(t))
		return NULL;
	t = btf__type_by_id(btf, t->type);          /* func proto */
	if (!t || !btf_is_func_proto(t))
		return NULL;
	*n = btf_vlen(t) - 1;
	return btf_params(t) + 1;
}

struct facts {
	int cache_arg, size_arg, req_arg, gfp_arg, ptr_arg, kmalloc_record;
	int kmalloc_node;               /* 1: a kmalloc_node raw tracepoint laid out as kmalloc's;
					 * -1: one laid out otherwise; 0: none (6.1+) */
	int task_btf;                   /* bpf_get_current_task_btf (5.11+) */
	int kprobe_regs;                /* struct pt_regs has di and sp (x86-64): the kprobe
					 * program can read the cache and the return address */
	int cache_node;                 /* 1: a kmem_cache_alloc_node raw tracepoint with the
					 * cache where kmem_cache_alloc has it (6.0); -1: one
					 * without; 0: none */
	int has_kfunc;                  /* bpf_get_kmem_cache (6.13+) */
	unsigned long long page_offset_base, vmemmap_base;   /* their addresses (kallsyms) */
	int page_shift;
};

/* Addresses of the kernel variables virt_to_page reads (x86-64 with a randomized memory
 * layout; /proc/kallsyms lists them where CONFIG_KALLSYMS_ALL is on): 0 where absent. */
static void find_page_symbols(struct facts *f)
{
	FILE *k = fopen("/proc/kallsyms", "r");
	if (!k)
		return;
	char line[512], name[256], type;
	unsigned long long addr;
	while (fgets(line, sizeof(line), k)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) != 3 || strchr("tTwW", type))
			continue;
		if (!strcmp(name, "page_offset_base"))
			f->page_offset_base = addr;
		else if (!strcmp(name, "vmemmap_base"))
			f->vmemmap_base = addr;
	}
	fclose(k);
	long page = sysconf(_SC_PAGESIZE);
	f->page_shift = 0;
	while ((1L << f->page_shift) < page)
		f->page_shift++;
}

/* Does BTF's struct `name` have every member listed (a NULL-ended list)? */
static int has_members(const struct btf *btf, const char *name, const char *const *want)
{
	int id = btf__find_by_name_kind(btf, name, BTF_KIND_STRUCT);
	if (id < 0)
		return 0;
	const struct btf_type *t = btf__type_by_id(btf, id);
	const struct btf_member *m = btf_members(t);
	for (; *want; want++) {
		int found = 0;
		for (int i = 0; i < btf_vlen(t) && !found; i++)
			found = !strcmp(btf__name_by_offset(btf, m[i].name_off), *want);
		if (!found)
			return 0;
	}
	return 1;
}

static void find_facts(struct facts *f)
{
	memset(f, 0, sizeof(*f));
	f->cache_arg = f->size_arg = f->req_arg = f->gfp_arg = f->ptr_arg = -1;
	struct btf *btf = btf__load_vmlinux_btf();
	if (!btf)
		die(3, "the kernel has no BTF (/sys/kernel/btf/vmlinux): %s", strerror(errno));
	int n = 0, is_ptr;
	const struct btf_param *p = tp_params(btf, "kmem_cache_alloc", &n);
	for (int i = 0; p && i < n; i++) {
		const char *bn = base_name(btf, p[i].type, &is_ptr);
		if (is_ptr && !strcmp(bn, "kmem_cache"))
			f->cache_arg = i;
	}
	/* 6.0 still has kmem_cache_alloc_node, with the cache pointer too */
	p = tp_params(btf, "kmem_cache_alloc_node", &n);
	if (p) {
		f->cache_node = -1;
		if (f->cache_arg >= 0 && f->cache_arg < n) {
			const char *bn = base_name(btf, p[f->cache_arg].type, &is_ptr);
			if (is_ptr && !strcmp(bn, "kmem_cache"))
				f->cache_node = 1;
		}
	}
	f->kprobe_regs = has_members(btf, "pt_regs", (const char *const[]){ "di", "sp", NULL });
	p = tp_params(btf, "kmalloc", &n);
	int sizes = 0;
	for (int i = 0; p && i < n; i++) {
		const char *bn = base_name(btf, p[i].type, &is_ptr);
		if (is_ptr) {
			if (f->ptr_arg < 0 && !strcmp(bn, ""))    /* const void *ptr */
				f->ptr_arg = i;
			continue;
		}
		if (!strcmp(bn, "size_t")) {   /* (call_site, ptr, bytes_req, bytes_alloc, gfp, node) */
			if (sizes++ == 0)
				f->req_arg = i;
			else
				f->size_arg = i;
		} else if (!strcmp(bn, "gfp_t")) {
			f->gfp_arg = i;
		}
	}
	/* kmalloc_node (before 6.1): (call_site, ptr, bytes_req, bytes_alloc, gfp_flags, node) */
	p = tp_params(btf, "kmalloc_node", &n);
	if (p) {
		int same = n > f->size_arg && n > f->req_arg && n > f->gfp_arg && n > f->ptr_arg &&
			   f->size_arg >= 0 && f->req_arg >= 0 && f->gfp_arg >= 0 && f->ptr_arg >= 0;
		int idx[4] = { f->size_arg, f->req_arg, f->gfp_arg, f->ptr_arg };
		const char *want[4] = { "size_t", "size_t", "gfp_t", "" };
		for (int i = 0; same && i < 4; i++)
			same = !strcmp(base_name(btf, p[idx[i]].type, &is_ptr), want[i]);
		f->kmalloc_node = same ? 1 : -1;
	}
	/* the kmalloc event record (struct trace_event_raw_kmalloc) with the fields read */
	f->kmalloc_record = has_members(btf, "trace_event_raw_kmalloc", (const char *const[]){
					"bytes_req", "bytes_alloc", "gfp_flags", NULL });
	f->has_kfunc = btf__find_by_name_kind(btf, "bpf_get_kmem_cache", BTF_KIND_FUNC) >= 0;
	btf__free(btf);
	f->task_btf = libbpf_probe_bpf_helper(BPF_PROG_TYPE_RAW_TRACEPOINT,
					      BPF_FUNC_get_current_task_btf, NULL) == 1;
	find_page_symbols(f);
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void print_comm(const char *c)
{
	for (int i = 0; i < COMM_LEN && c[i]; i++)
		printf("%02x", (unsigned char)c[i]);
	if (!c[0])
		printf("-");
}

/*
 * The frames a raw tracepoint program sees first are the tracing machinery itself (the BPF
 * program, bpf_trace_runN, __bpf_trace_<tp>): they are cut here, where /proc/kallsyms is at
 * hand, so stacks start at the allocator as they do from other tracers. They cannot be left to
 * slabkit/model/vocabulary.py (TRACER_GLUE drops the same names from every tracer's stacks):
 * the program's own bpf_prog_ symbol is gone from kallsyms once it is unloaded, before slabkit
 * saves kallsyms, and an unnamed first frame would stop the cut there. Keep the lists alike:
 * tests/test_vocabulary.py checks that every name cut here is TRACER_GLUE there.
 */
struct range { unsigned long long lo, hi; };
static struct range text = { 0, ~0ULL };
static struct range *machinery;
static int n_machinery, cap_machinery;

static int is_machinery_name(const char *n)
{
	return !strncmp(n, "bpf_trace_run", 13) || !strncmp(n, "__bpf_trace_", 12) ||
	       !strncmp(n, "__traceiter_", 12) || !strncmp(n, "bpf_prog_", 9) ||
	       !strncmp(n, "perf_trace_", 11);
}

static void read_kallsyms(void)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	if (!f)
		return;
	char line[512], name[256], type;
	unsigned long long addr, open_lo = 0;
	int open = 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) != 3)
			continue;
		if (open && addr > open_lo) {          /* a machinery symbol ends at the next one */
			if (n_machinery == cap_machinery) {
				cap_machinery = cap_machinery ? 2 * cap_machinery : 1024;
				machinery = realloc(machinery, cap_machinery * sizeof(*machinery));
				if (!machinery)
					die(4, "out of memory");
			}
			machinery[n_machinery].lo = open_lo;
			machinery[n_machinery++].hi = addr;
			open = 0;
		}
		if (!strcmp(name, "_stext"))
			text.lo = addr;
		else if (!strcmp(name, "_etext"))
			text.hi = addr;
		else if ((type == 't' || type == 'T') && is_machinery_name(name)) {
			open_lo = addr;
			open = 1;
		}
	}
	fclose(f);
}

static int skip_frame(unsigned long long ip)
{
	if (ip < text.lo || ip >= text.hi)        /* JIT-ed BPF code lives outside kernel text */
		return 1;
	for (int i = 0; i < n_machinery; i++)
		if (ip >= machinery[i].lo && ip < machinery[i].hi)
			return 1;
	return 0;
}

static void print_stack(unsigned long long id, const __u64 *ip, __u32 depth)
{
	printf("stack\t%016llx", id);
	__u32 i = 0;
	while (i < depth && i < 4 && skip_frame(ip[i]))
		i++;
	for (; i < depth && i < MAX_DEPTH; i++)
		printf("\t%llx", (unsigned long long)ip[i]);
	printf("\n");
}

static void print_key(const char *kind, const struct key *k)
{
	printf("%s\t%u\t%u\t%llu\t", kind, k->pid, k->tid, (unsigned long long)k->cgroup);
	print_comm(k->comm);
	printf("\t%llx", (unsigned long long)k->call_site);
}

static void dump(struct slabcount_bpf *skel, int prog_fd, int raw_tp)
{
	int ncpu = libbpf_num_possible_cpus();
	int fd;
	struct key k, *prevk = NULL;
	struct value *vals = calloc(ncpu, sizeof(*vals));
	struct last *lasts = calloc(ncpu, sizeof(*lasts));
	__u64 *stat = calloc(ncpu, sizeof(*stat));
	if (!vals || !stat || !lasts)
		die(4, "out of memory");

	printf("format\t3\n");     /* 3: keys carry the call site; no format line before */
	fd = bpf_map__fd(skel->maps.stats);
	for (__u32 i = 0; i < sizeof(stat_names) / sizeof(*stat_names); i++) {
		__u64 tot = 0;
		if (!bpf_map_lookup_elem(fd, &i, stat))
			for (int c = 0; c < ncpu; c++)
				tot += stat[c];
		printf("stat\t%s\t%llu\n", stat_names[i], (unsigned long long)tot);
	}
	printf("stat\tprobe_fired\t%d\n", skel->bss->fired ? 1 : 0);
	/* events that came while the program ran on the same CPU (an interrupt's allocation):
	 * the kernel skipped the program for them; they may be of any cache */
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info);
	/* -1: not known. Kernels before 5.12 have no such count; kprobe and tracepoint programs
	 * are skipped the same way (one BPF program at a time per CPU) but counted only since
	 * 6.7: for them the count is not trusted */
	long long nested = -1;
	if (raw_tp && !bpf_obj_get_info_by_fd(prog_fd, &info, &len) &&
	    len >= offsetof(struct bpf_prog_info, recursion_misses) + sizeof(info.recursion_misses))
		nested = (long long)info.recursion_misses;
	printf("stat\tnested_skipped\t%lld\n", nested);
	printf("known_cache\t%s\n", skel->bss->known_cache ? "yes" : "no");

	/* what each CPU counted under its last key and had not yet added to the map */
	__u32 zero = 0;
	if (!bpf_map_lookup_elem(bpf_map__fd(skel->maps.lasts), &zero, lasts))
		for (int c = 0; c < ncpu; c++)
			if (lasts[c].count) {
				print_key("count", &lasts[c].key);
				printf("\t%llu\t%llu\n", (unsigned long long)lasts[c].count,
				       (unsigned long long)lasts[c].bytes_req);
			}

	fd = bpf_map__fd(skel->maps.counts);
	while (bpf_map_get_next_key(fd, prevk, &k) == 0) {
		if (!bpf_map_lookup_elem(fd, &k, vals)) {
			__u64 n = 0, req = 0;
			for (int c = 0; c < ncpu; c++) {
				n += vals[c].count;
				req += vals[c].bytes_req;
			}
			if (n) {        /* a key slot taken whose events are all still pending */
				print_key("count", &k);
				printf("\t%llu\t%llu\n", (unsigned long long)n,
				       (unsigned long long)req);
			}
		}
		prevk = &k;
	}

	struct stack_key sk, *prevsk = NULL;
	fd = bpf_map__fd(skel->maps.samples);
	while (bpf_map_get_next_key(fd, prevsk, &sk) == 0) {
		if (!bpf_map_lookup_elem(fd, &sk, vals)) {
			__u64 w = 0, req = 0;
			for (int c = 0; c < ncpu; c++) {
				w += vals[c].count;
				req += vals[c].bytes_req;
			}
			print_key("sample", &sk.who);
			printf("\t%016llx\t%llu\t%llu\n", (unsigned long long)sk.stack,
			       (unsigned long long)w, (unsigned long long)req);
		}
		prevsk = &sk;
	}

	__u64 h, *prevh = NULL;
	struct stack st;
	fd = bpf_map__fd(skel->maps.stacks);
	while (bpf_map_get_next_key(fd, prevh, &h) == 0) {
		if (!bpf_map_lookup_elem(fd, &h, &st))
			print_stack(h, st.ip, st.depth);
		prevh = &h;
	}
	/* the kernel's stack map: ids marked with the top bit; frames end at the first 0 */
	__u32 id, *previd = NULL;
	fd = bpf_map__fd(skel->maps.kstacks);
	while (bpf_map_get_next_key(fd, previd, &id) == 0) {
		memset(st.ip, 0, sizeof(st.ip));
		if (!bpf_map_lookup_elem(fd, &id, st.ip)) {
			__u32 depth = 0;
			while (depth < MAX_DEPTH && st.ip[depth])
				depth++;
			print_stack((1ULL << 63) | id, st.ip, depth);
		}
		previd = &id;
	}
	printf("end\n");
	fflush(stdout);
	free(vals);
	free(lasts);
	free(stat);
}

/*
 * A program that started before the detach may still be running on another CPU. Tracepoint
 * probes run with preemption disabled, so one RCU grace period covers them all: the global
 * membarrier waits for one (synchronize_rcu). Where it is refused, a pause does it.
 */
static void wait_for_running_programs(void)
{
	if (syscall(__NR_membarrier, 1 /* MEMBARRIER_CMD_GLOBAL */, 0, 0) != 0)
		usleep(50000);
}

/* The common settings of a freshly opened skeleton (every program off). */
static struct slabcount_bpf *open_skel(const struct facts *f)
{
	struct slabcount_bpf *skel = slabcount_bpf__open();
	if (!skel)
		die(3, "cannot open the BPF object: %s", strerror(errno));
	skel->rodata->cache_arg = f->cache_arg < 0 ? 2 : f->cache_arg;
	skel->rodata->size_arg = f->size_arg;
	skel->rodata->req_arg = f->req_arg;
	skel->rodata->gfp_arg = f->gfp_arg;
	skel->rodata->ptr_arg = f->ptr_arg < 0 ? 1 : f->ptr_arg;
	skel->rodata->page_offset_base_addr = f->page_offset_base;
	skel->rodata->vmemmap_base_addr = f->vmemmap_base;
	skel->rodata->page_shift = f->page_shift;
	struct bpf_program *p;
	bpf_object__for_each_program(p, skel->obj)
		bpf_program__set_autoload(p, false);
	return skel;
}

/* How this kernel lets the program find an object's slab: SLAB_BY_KFUNC, SLAB_BY_PAGE or
 * 0 (neither). */
enum { SLAB_BY_KFUNC = 1, SLAB_BY_PAGE = 2 };
static int slab_lookup_way(const struct facts *f)
{
	if (f->has_kfunc)
		return SLAB_BY_KFUNC;
	if (f->page_offset_base && f->vmemmap_base && f->ptr_arg >= 0)
		return SLAB_BY_PAGE;
	return 0;
}

/*
 * Check the object -> slab -> cache lookup on live events before anything relies on it:
 * for a moment, every kmem_cache_alloc event compares the cache its object's slab names
 * with the cache the event passes (opening /dev/null makes a few). Returns how many events
 * agreed, or -1 when one did not, or the check could not run.
 */
static long check_slab_lookup(const struct facts *f, int way)
{
	if (!way || (f->cache_arg != 2 && f->cache_arg != 3))
		return -1;
	struct slabcount_bpf *skel = open_skel(f);
	struct bpf_program *prog = way == SLAB_BY_KFUNC ? skel->progs.check_kfunc
							: skel->progs.check_page;
	bpf_program__set_autoload(prog, true);
	long agreed = -1;
	struct bpf_link *link = NULL;
	if (slabcount_bpf__load(skel) == 0 && (link = bpf_program__attach(prog))) {
		for (int i = 0; i < 200; i++) {
			int fd = open("/dev/null", O_RDONLY);
			if (fd >= 0)
				close(fd);
		}
		bpf_link__destroy(link);
		wait_for_running_programs();
		if (!skel->bss->lookup_differed)
			agreed = (long)skel->bss->lookup_agreed;
	}
	slabcount_bpf__destroy(skel);
	return agreed > 0 ? agreed : -1;
}

#define MAX_FUNCTIONS 8
#define FUNCTION_NAME_LEN 128

/* "a,b,c" into names of [A-Za-z0-9_.], each 1 to 127 bytes; at most MAX_FUNCTIONS. */
static int split_functions(const char *list, char names[][FUNCTION_NAME_LEN])
{
	int n = 0, len = 0;
	for (const char *c = list;; c++) {
		if (*c == ',' || !*c) {
			if (!len || n == MAX_FUNCTIONS)
				die(2, "--functions wants 1 to %d comma-separated function names",
				    MAX_FUNCTIONS);
			names[n++][len] = 0;
			len = 0;
			if (!*c)
				return n;
			continue;
		}
		if (!(*c == '_' || *c == '.' || (*c >= 'a' && *c <= 'z') ||
		      (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')) ||
		    len == FUNCTION_NAME_LEN - 1 || n == MAX_FUNCTIONS)
			die(2, "--functions: not a function name list: %s", list);
		names[n][len++] = *c;
	}
}

static void attach_failed(struct slabcount_bpf *skel, struct bpf_link **links, int n,
			  const char *what)
{
	int e = errno;
	for (int i = 0; i < n; i++)
		bpf_link__destroy(links[i]);
	slabcount_bpf__destroy(skel);
	die(3, "cannot attach to %s: %s", what, strerror(e));
}

static long num(const char *opt, const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 0);
	if (errno || *end || v < lo || v > hi)
		die(2, "%s wants a number from %ld to %ld, not %s", opt, lo, hi, s);
	return v;
}

int main(int argc, char **argv)
{
	const char *cache = NULL, *comm = NULL, *functions = NULL;
	long kmalloc_size = 0, pid = 0, every = 32, hot_every = 0, count_keys = 65536;
	long sample_keys = 65536;
	long stack_keys = 16384, kstack_keys = 4096, gfp_require = 0, gfp_forbid = 0;
	long max_depth = MAX_DEPTH;
	int probe = 0, record = 0, no_task_btf = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--probe")) { probe = 1; continue; }
		if (!strcmp(a, "--record-event")) { record = 1; continue; }
		if (!strcmp(a, "--no-task-btf")) { no_task_btf = 1; continue; }
		if (!v)
			die(2, "%s needs a value", a);
		i++;
		if (!strcmp(a, "--cache")) cache = v;
		else if (!strcmp(a, "--comm")) comm = v;
		else if (!strcmp(a, "--functions")) functions = v;
		else if (!strcmp(a, "--kmalloc-size")) kmalloc_size = num(a, v, 1, 1L << 30);
		else if (!strcmp(a, "--gfp-require")) gfp_require = num(a, v, 0, 0x7fffffff);
		else if (!strcmp(a, "--gfp-forbid")) gfp_forbid = num(a, v, 0, 0x7fffffff);
		else if (!strcmp(a, "--pid")) pid = num(a, v, 1, 0x7fffffff);
		else if (!strcmp(a, "--stack-every")) every = num(a, v, 1, 1 << 20);
		else if (!strcmp(a, "--hot-every")) hot_every = num(a, v, 1, 1 << 24);
		else if (!strcmp(a, "--count-keys")) count_keys = num(a, v, 16, 1 << 24);
		else if (!strcmp(a, "--sample-keys")) sample_keys = num(a, v, 16, 1 << 24);
		else if (!strcmp(a, "--stack-keys")) stack_keys = num(a, v, 16, 1 << 22);
		else if (!strcmp(a, "--kstack-keys")) kstack_keys = num(a, v, 1, 1 << 20);
		else if (!strcmp(a, "--max-depth")) max_depth = num(a, v, 1, MAX_DEPTH);
		else die(2, "unknown option %s", a);
	}
	libbpf_set_print(quiet_print);
	struct facts f;
	find_facts(&f);
	if (no_task_btf)
		f.task_btf = 0;
	struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
	setrlimit(RLIMIT_MEMLOCK, &rl);   /* kernels before 5.11 charge maps to memlock */
	if (probe) {
		int way = slab_lookup_way(&f);
		long checked = check_slab_lookup(&f, way);
		printf("cache_arg\t%d\nsize_arg\t%d\nreq_arg\t%d\ngfp_arg\t%d\nptr_arg\t%d\n"
		       "kmalloc_record\t%d\n",
		       f.cache_arg, f.size_arg, f.req_arg, f.gfp_arg, f.ptr_arg, f.kmalloc_record);
		/* slab_lookup 1: kmalloc events can be matched by their object's own slab */
		printf("slab_lookup\t%d\nslab_lookup_kfunc\t%d\nslab_lookup_checked\t%ld\n",
		       checked > 0, checked > 0 && way == SLAB_BY_KFUNC, checked > 0 ? checked : 0);
		printf("kmalloc_node\t%d\ntask_btf\t%d\nkprobe_regs\t%d\ncache_node\t%d\n",
		       f.kmalloc_node, f.task_btf, f.kprobe_regs, f.cache_node);
		return 0;
	}
	if (!cache && !kmalloc_size)
		die(2, "give --cache NAME, --kmalloc-size N, or both (a kmalloc cache by its slab)");
	int by_slab = cache && kmalloc_size;
	if (cache && (strlen(cache) == 0 || strlen(cache) >= 64))
		die(2, "--cache wants a name of 1 to 63 bytes");
	if (comm && (strlen(comm) == 0 || strlen(comm) >= COMM_LEN))
		die(2, "--comm wants 1 to 15 bytes");
	/* kprobes on these functions instead of the raw tracepoint */
	char fn_names[MAX_FUNCTIONS][FUNCTION_NAME_LEN];
	int n_fn = functions ? split_functions(functions, fn_names) : 0;
	if (functions && (!cache || kmalloc_size))
		die(2, "--functions goes with --cache alone (a dedicated cache)");
	if (functions && !f.kprobe_regs)
		die(3, "--functions reads the cache and the return address from x86-64 registers, "
		       "which this kernel's struct pt_regs does not have");
	for (int i = 0; i < n_fn; i++)
		for (int j = 0; j < i; j++)
			if (!strcmp(fn_names[i], fn_names[j]))
				die(2, "--functions names %s twice (its events would count twice)",
				    fn_names[i]);
	if (cache && !by_slab && !functions && f.cache_node < 0)
		die(3, "raw tracepoint kmem_cache_alloc_node has no cache pointer where "
		       "kmem_cache_alloc has one");
	/* pick() reads the first five arguments of a raw tracepoint */
	if (kmalloc_size && (f.size_arg > 4 || f.req_arg > 4 || f.gfp_arg > 4 || f.ptr_arg > 4))
		die(3, "raw tracepoint kmalloc has its bytes_alloc, bytes_req, gfp_flags or ptr "
		       "beyond its fifth argument here, which slabcount does not read");
	if (cache && !by_slab && !functions && f.cache_arg < 0)
		die(3, "raw tracepoint kmem_cache_alloc has no struct kmem_cache * argument "
		       "on this kernel (Linux 6.0+ has one): give --functions to probe the "
		       "allocation functions instead");
	if (cache && !by_slab && !functions && f.cache_arg != 2 && f.cache_arg != 3)
		die(3, "unexpected kmem_cache_alloc argument layout (cache is argument %d)",
		    f.cache_arg);
	if (record && !kmalloc_size)
		die(2, "--record-event goes with --kmalloc-size");
	if (record && f.kmalloc_node)
		die(3, "--record-event does not follow kmalloc_node, which this kernel still has");
	if (record && !f.task_btf)
		die(3, "--record-event needs bpf_get_current_task_btf (Linux 5.11+)");
	if (by_slab && !f.task_btf)
		die(3, "finding an object's slab needs bpf_get_current_task_btf (Linux 5.11+)");
	if (kmalloc_size && f.kmalloc_node < 0)
		die(3, "the raw tracepoint kmalloc_node is laid out unlike kmalloc here");
	if (record && !f.kmalloc_record)
		die(3, "this kernel's BTF has no kmalloc event record (trace_event_raw_kmalloc "
		       "with bytes_req, bytes_alloc, gfp_flags)");
	if (kmalloc_size && !record && (f.size_arg < 0 || f.gfp_arg < 0 || f.req_arg < 0))
		die(3, "raw tracepoint kmalloc lacks bytes_alloc/gfp_flags arguments here");
	int way = by_slab ? slab_lookup_way(&f) : 0;
	if (by_slab && check_slab_lookup(&f, way) < 0)
		die(3, "this kernel does not let slabcount find an object's slab (no "
		       "bpf_get_kmem_cache kfunc, and page_offset_base/vmemmap_base are not in "
		       "kallsyms or did not check out): match the size class instead");

	struct slabcount_bpf *skel = open_skel(&f);
	skel->rodata->match_size = kmalloc_size;
	skel->rodata->gfp_require = gfp_require;
	skel->rodata->gfp_forbid = gfp_forbid;
	skel->rodata->filter_pid = pid;
	skel->rodata->stack_every = every;
	skel->rodata->own_frames = record ? 0 : 1;
	/* default: 8 x --stack-every once a key has had 128 samples on a CPU */
	skel->rodata->hot_every = hot_every ? hot_every : (every > (1 << 21) ? 1 << 24 : 8 * every);
	if (comm) {
		skel->rodata->filter_comm = 1;
		strncpy((char *)skel->rodata->comm_value, comm, COMM_LEN - 1);
	}
	if (cache) {
		strncpy((char *)skel->rodata->cache_name, cache, 63);
		skel->rodata->cache_name_len = strlen(cache);
	}
	bpf_map__set_max_entries(skel->maps.counts, count_keys);
	bpf_map__set_max_entries(skel->maps.samples, sample_keys);
	bpf_map__set_max_entries(skel->maps.stacks, stack_keys);
	bpf_map__set_max_entries(skel->maps.kstacks, kstack_keys);
	/* frames beyond max_depth are not walked (walks cost per frame): the stack map's value
	 * size bounds bpf_get_stackid, walk_bytes bpf_get_stack */
	bpf_map__set_value_size(skel->maps.kstacks, max_depth * sizeof(__u64));
	skel->rodata->walk_bytes = max_depth * sizeof(__u64);
	struct bpf_program *prog =
		by_slab && record ? (way == SLAB_BY_KFUNC ? skel->progs.on_kmalloc_record_kfunc
							  : skel->progs.on_kmalloc_record_page)
		: by_slab ? (way == SLAB_BY_KFUNC ? skel->progs.on_kmalloc_kfunc
						  : skel->progs.on_kmalloc_page)
		: functions ? skel->progs.on_cache_function
		: cache ? skel->progs.on_cache_alloc
		: record ? skel->progs.on_kmalloc_record
		: f.task_btf ? skel->progs.on_kmalloc : skel->progs.on_kmalloc_compat;
	bpf_program__set_autoload(prog, true);
	/* a kprobe's stack starts in the probed function: no frame of ours to skip */
	if (functions)
		skel->rodata->own_frames = 0;
	int err = slabcount_bpf__load(skel);
	if (err)
		die(3, "the kernel refused the BPF program: %s", strerror(-err));

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct bpf_link *links[MAX_FUNCTIONS + 1];
	int n_links = 0;
	char where[MAX_FUNCTIONS * (FUNCTION_NAME_LEN + 2) + 64] = "";
	if (functions) {
		strcat(where, "kprobe ");
		for (int i = 0; i < n_fn; i++) {
			links[n_links] = bpf_program__attach_kprobe(prog, false, fn_names[i]);
			if (!links[n_links])
				attach_failed(skel, links, n_links, fn_names[i]);
			n_links++;
			if (i)
				strcat(where, ",");
			strcat(where, fn_names[i]);
		}
	} else {
		links[n_links] = bpf_program__attach(prog);
		if (!links[n_links])
			attach_failed(skel, links, n_links, cache && !by_slab ? "kmem_cache_alloc"
								  : "kmalloc");
		n_links++;
		strcat(where, cache && !by_slab ? "kmem_cache_alloc"
			      : record ? "kmalloc (event record)" : "kmalloc");
		/* kmem_cache_alloc_node (6.0) is kmem_cache_alloc's other half */
		if (cache && !by_slab && f.cache_node == 1) {
			links[n_links] = bpf_program__attach_raw_tracepoint(prog,
									    "kmem_cache_alloc_node");
			if (!links[n_links])
				attach_failed(skel, links, n_links, "kmem_cache_alloc_node");
			n_links++;
			strcat(where, ", kmem_cache_alloc_node");
		}
		/* kmalloc_node (kernels before 6.1) is kmalloc's other half: the same program */
		if (kmalloc_size && f.kmalloc_node == 1) {
			links[n_links] = bpf_program__attach_raw_tracepoint(prog, "kmalloc_node");
			if (!links[n_links])
				attach_failed(skel, links, n_links, "kmalloc_node");
			n_links++;
			strcat(where, ", kmalloc_node");
		}
	}
	printf("slabkit-attached\t%s%s\n", where, by_slab ? ", by the object's slab" : "");
	fflush(stdout);
	while (!stop)
		pause();
	for (int i = 0; i < n_links; i++)       /* detach first: the counts stop moving */
		bpf_link__destroy(links[i]);
	wait_for_running_programs();
	read_kallsyms();
	dump(skel, bpf_program__fd(prog), !functions && !record);
	slabcount_bpf__destroy(skel);
	return 0;
}
