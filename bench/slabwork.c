/* slabwork: a workload that makes a known number of slab allocations.
 *
 *   slabwork open N PATH     N x open(PATH)+close: N allocations from the filp cache
 *   slabwork stat N DIR      N x stat(DIR/missing-<pid>-<i>): N negative dentries (dentry)
 *   slabwork eventfd N       N x eventfd()+close: N kmalloc-<sizeof eventfd_ctx> + N filp
 *   slabwork hold N PATH     open N fds of PATH and keep them; on "c" close every other one
 *   slabwork loop SECONDS PATH   open/close PATH as fast as possible; prints ops/s (bench)
 *
 * Protocol (so a test can start its probe after the process exists): prints "pid <pid>",
 * waits for a line on stdin ("go"), does the work, prints "done <count>", then waits for
 * stdin to close before exiting. With -n (no wait), starts at once and exits when done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int wait_line(void) {
    char buf[64];
    return fgets(buf, sizeof buf, stdin) ? buf[0] : -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int nowait = 0;
    if (argc > 1 && strcmp(argv[1], "-n") == 0) { nowait = 1; argv++; argc--; }
    if (argc < 3) {
        fprintf(stderr, "usage: slabwork [-n] open|stat|eventfd|hold|loop N [PATH]\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = strtol(argv[2], NULL, 10);
    const char *path = argc > 3 ? argv[3] : "/dev/null";
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", getpid());
    if (!nowait && wait_line() < 0) return 1;
    long done = 0;
    if (strcmp(mode, "open") == 0) {
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY);
            if (fd < 0) { perror("open"); return 1; }
            close(fd);
            done++;
        }
    } else if (strcmp(mode, "stat") == 0) {
        char name[4096];
        struct stat st;
        for (long i = 0; i < n; i++) {
            snprintf(name, sizeof name, "%s/missing-%d-%ld", path, getpid(), i);
            if (stat(name, &st) == 0 || errno != ENOENT) { fprintf(stderr, "%s exists\n", name); return 1; }
            done++;
        }
    } else if (strcmp(mode, "eventfd") == 0) {
        for (long i = 0; i < n; i++) {
            int fd = eventfd(0, 0);
            if (fd < 0) { perror("eventfd"); return 1; }
            close(fd);
            done++;
        }
    } else if (strcmp(mode, "hold") == 0) {
        int *fds = calloc(n, sizeof *fds);
        for (long i = 0; i < n; i++) {
            fds[i] = open(path, O_RDONLY);
            if (fds[i] < 0) { perror("open"); return 1; }
            done++;
        }
        printf("done %ld\n", done);
        if (nowait) return 0;
        if (wait_line() == 'c') {
            long closed = 0;
            for (long i = 0; i < n; i += 2) { close(fds[i]); closed++; }
            printf("closed %ld\n", closed);
        }
        while (wait_line() >= 0) {}
        return 0;
    } else if (strcmp(mode, "loop") == 0) {
        double end = now() + (double)n, t0 = now();
        long ops = 0;
        while (1) {
            for (int k = 0; k < 1000; k++) {
                int fd = open(path, O_RDONLY);
                if (fd < 0) { perror("open"); return 1; }
                close(fd);
            }
            ops += 1000;
            if (now() >= end) break;
        }
        printf("ops %ld seconds %.6f\n", ops, now() - t0);
        done = ops;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("done %ld\n", done);
    if (!nowait) while (wait_line() >= 0) {}
    return 0;
}
