/* slabwork: a tiny, static, deterministic slab workload for the kernel-matrix tests.
 *
 *   slabwork open N PATH   N x open(PATH, O_RDONLY|O_CREAT)+close: N `filp` allocations
 *   slabwork stat N DIR    N x stat(DIR/slabwork-missing-<pid>-<i>): N distinct missing paths,
 *                          so N negative-dentry allocations (`dentry`) and N `names_cache` getname()s
 *   slabwork pipe N        N x pipe()+close: N pipe_inode_info + N pipe buffer arrays (kmalloc)
 *   slabwork sleep MS      just sleep (for attach tests)
 *
 * The first line on stdout is "pid <PID>", flushed before any work, so a tracer can key on it.
 * The last line is "done <mode> <N>". Exit status 0 on success, 1 on any failed syscall.
 * Built with `gcc -static -O2`, so exec opens no shared libraries (no extra filp allocations
 * beyond the exec of the binary itself, which happens before comm becomes "slabwork").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void usage(void)
{
	fprintf(stderr, "usage: slabwork open N PATH | stat N DIR | pipe N | sleep MS\n");
	exit(2);
}

static long parse_n(const char *s)
{
	char *end;
	long n = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || n < 0)
		usage();
	return n;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		usage();
	const char *mode = argv[1];
	long n = parse_n(argv[2]);
	long i;

	printf("pid %d\n", (int)getpid());
	fflush(stdout);

	if (strcmp(mode, "open") == 0) {
		if (argc != 4)
			usage();
		for (i = 0; i < n; i++) {
			int fd = open(argv[3], O_RDONLY | O_CREAT, 0644);
			if (fd < 0) {
				perror("open");
				return 1;
			}
			close(fd);
		}
	} else if (strcmp(mode, "stat") == 0) {
		if (argc != 4)
			usage();
		char path[4096];
		struct stat st;
		for (i = 0; i < n; i++) {
			snprintf(path, sizeof path, "%s/slabwork-missing-%d-%ld", argv[3], (int)getpid(), i);
			if (stat(path, &st) == 0 || errno != ENOENT) {
				fprintf(stderr, "stat %s: expected ENOENT\n", path);
				return 1;
			}
		}
	} else if (strcmp(mode, "pipe") == 0) {
		int p[2];
		for (i = 0; i < n; i++) {
			if (pipe(p) < 0) {
				perror("pipe");
				return 1;
			}
			close(p[0]);
			close(p[1]);
		}
	} else if (strcmp(mode, "sleep") == 0) {
		struct timespec ts = { n / 1000, (n % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	} else {
		usage();
	}
	printf("done %s %ld\n", mode, n);
	return 0;
}
