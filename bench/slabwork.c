/* slabwork: a workload that makes a known number of slab allocations.
 *
 *   slabwork open N PATH     N x open(PATH)+close: N allocations from the filp cache
 *   slabwork stat N DIR      N x stat(DIR/missing-<pid>-<i>): N negative dentries (dentry)
 *   slabwork eventfd N       N x eventfd()+close: N kmalloc-<sizeof eventfd_ctx> + N filp
 *   slabwork pipe N          N x pipe()+close: N pipe_inode_info (kmalloc-cg-192) + N pipe
 *                            buffer arrays (kmalloc-cg-1k), with __GFP_ACCOUNT
 *   slabwork sleep MS        no allocations: sleep MS milliseconds (attach tests)
 *   slabwork hold N PATH     open N fds of PATH and keep them; on "c" close every other one
 *   slabwork loop SECONDS PATH   open/close PATH as fast as possible; prints ops/s (bench)
 *   slabwork eventfdloop SECONDS eventfd()+close as fast as possible (kmalloc-64 + filp); ops/s
 *   slabwork mixloop SECONDS PATH  filp allocations from several call sites in fixed shares,
 *                                as fast as possible: per 100 filps 60 open(PATH), 20 eventfd,
 *                                5 pipe (10 filps: 5 pseudo + 5 clone), 4 socket(AF_UNIX),
 *                                3 epoll_create1, 2 signalfd, 1 memfd_create; prints ops
 *                                (filps) and "mix open=.. eventfd=.. ..." (bench accuracy)
 *   slabwork iouring N       N x (io_uring_setup, one IORING_OP_NOP submitted and waited for
 *                            with io_uring_enter, close): N io_uring requests (io_kiocb), each
 *                            from a fresh ring, whose empty request cache the kernel refills
 *                            with kmem_cache_alloc_bulk (a batch of 8 since the 5.15 io_uring,
 *                            which Debian's 5.10 has too); also N ring files (filp)
 *   slabwork callsites N     N x memfd_create+close and 2N x epoll_create1+close: 3N kmalloc-256
 *                            (or whichever cache holds 256 bytes) from two call sites,
 *                            __do_sys_memfd_create (its name buffer) and do_epoll_create
 *                            (struct eventpoll); the report line is "done 3N memfd N epoll 2N"
 *   slabwork msg N SIZE      N x msgsnd of SIZE bytes + msgrcv on a private queue: N msg_msg
 *                            headers+text (SIZE + 48 bytes on 64-bit: msg_msg-64 for SIZE 16,
 *                            with CONFIG_SLAB_BUCKETS; kmalloc-cg-64 without)
 *   slabwork lifecycle N PATH  N x open(PATH) as "slabwork", renames itself "slabwork-b"
 *                            (prctl), N more, then forks a child that makes N more and exits:
 *                            3N filp allocations across a rename and a fork; the report line
 *                            is "done 3N child <pid>" (tests of comm/tgid attribution)
 *   slabwork threads N PATH  the main thread allocates nothing: a worker thread started before
 *                            "go" makes N x open(PATH), then one started after "go" makes N
 *                            more; the report line is "done 2N tids <tid1> <tid2>" (pid filters
 *                            must match the process, not the thread)
 *   slabwork socket N        N x socket(AF_UNIX, SOCK_DGRAM)+close: N objects from the UNIX
 *                            cache (merged with others on some kernels: alias tests)
 *
 * Protocol (so a test can start its probe after the process exists): prints "pid <pid>",
 * waits for a line on stdin ("go"), does the work, prints "done <count>", then waits for
 * stdin to close before exiting. With -n (no wait), starts at once and exits when done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <linux/io_uring.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int wait_line(void) {
    char buf[64];
    return fgets(buf, sizeof buf, stdin) ? buf[0] : -1;
}

static int open_close(const char *path, long n) {
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) { perror("open"); return -1; }
        close(fd);
    }
    return 0;
}

/* One io_uring with one NOP request, submitted and completed: raw syscalls, no liburing. */
static int uring_nop(void) {
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    int fd = (int)syscall(__NR_io_uring_setup, 1, &params);
    if (fd < 0) { perror("io_uring_setup"); return -1; }
    size_t sq_len = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    size_t sqes_len = params.sq_entries * sizeof(struct io_uring_sqe);
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                    IORING_OFF_SQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, sqes_len, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || sqes == MAP_FAILED) { perror("mmap io_uring"); close(fd); return -1; }
    unsigned *tail = (unsigned *)(sq + params.sq_off.tail);
    unsigned mask = *(unsigned *)(sq + params.sq_off.ring_mask);
    unsigned *array = (unsigned *)(sq + params.sq_off.array);
    memset(&sqes[0], 0, sizeof sqes[0]);
    sqes[0].opcode = IORING_OP_NOP;
    array[*tail & mask] = 0;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    int ret = (int)syscall(__NR_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (ret != 1) { fprintf(stderr, "io_uring_enter: %d (%s)\n", ret, strerror(errno)); }
    munmap(sqes, sqes_len);
    munmap(sq, sq_len);
    close(fd);
    return ret == 1 ? 0 : -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* --- threads mode: allocations made by worker threads only ----------------------------- */
struct threads_job { const char *path; long n; int gate; pid_t tid; int failed; };

static void *threads_worker(void *arg) {
    struct threads_job *job = arg;
    char c;
    job->tid = (pid_t)syscall(SYS_gettid);
    if (job->gate >= 0 && read(job->gate, &c, 1) != 1) { job->failed = 1; return NULL; }
    job->failed = open_close(job->path, job->n) < 0;
    return NULL;
}

static int threads_mode(long n, const char *path, int nowait) {
    int gate[2];
    pthread_t early, late;
    if (pipe(gate) < 0) { perror("pipe"); return 1; }
    struct threads_job first = { path, n, gate[0], 0, 0 }, second = { path, n, -1, 0, 0 };
    if (pthread_create(&early, NULL, threads_worker, &first)) { fprintf(stderr, "pthread_create\n"); return 1; }
    printf("pid %d\n", getpid());
    if (!nowait && wait_line() < 0) return 1;
    if (write(gate[1], "g", 1) != 1) { perror("write"); return 1; }
    pthread_join(early, NULL);
    if (pthread_create(&late, NULL, threads_worker, &second)) { fprintf(stderr, "pthread_create\n"); return 1; }
    pthread_join(late, NULL);
    if (first.failed || second.failed) return 1;
    printf("done %ld tids %d %d\n", 2 * n, (int)first.tid, (int)second.tid);
    if (!nowait) while (wait_line() >= 0) {}
    return 0;
}
/* --- end of threads mode ----------------------------------------------------------------- */

/* --- socket mode: N AF_UNIX sockets, one UNIX cache object each ------------------------- */
static int socket_mode(long n, int nowait) {
    printf("pid %d\n", getpid());
    if (!nowait && wait_line() < 0) return 1;
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (fd < 0) { perror("socket"); return 1; }
        close(fd);
    }
    printf("done %ld\n", n);
    if (!nowait) while (wait_line() >= 0) {}
    return 0;
}
/* --- end of socket mode ------------------------------------------------------------------ */

int main(int argc, char **argv) {
    int nowait = 0;
    if (argc > 1 && strcmp(argv[1], "-n") == 0) { nowait = 1; argv++; argc--; }
    if (argc < 3) {
        fprintf(stderr, "usage: slabwork [-n] open|stat|eventfd|pipe|iouring|callsites|msg|sleep|hold|loop|eventfdloop|mixloop|lifecycle N [PATH]\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = strtol(argv[2], NULL, 10);
    const char *path = argc > 3 ? argv[3] : "/dev/null";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(mode, "threads") == 0) return threads_mode(n, path, nowait);
    if (strcmp(mode, "socket") == 0) return socket_mode(n, nowait);
    printf("pid %d\n", getpid());
    if (!nowait && wait_line() < 0) return 1;
    long done = 0;
    pid_t child = 0;
    if (strcmp(mode, "lifecycle") == 0) {
        if (open_close(path, n) < 0) return 1;
        if (prctl(PR_SET_NAME, "slabwork-b", 0, 0, 0) < 0) { perror("prctl"); return 1; }
        if (open_close(path, n) < 0) return 1;
        child = fork();
        if (child < 0) { perror("fork"); return 1; }
        if (child == 0) _exit(open_close(path, n) < 0 ? 1 : 0);
        int status;
        if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
            fprintf(stderr, "child failed\n");
            return 1;
        }
        done = 3 * n;
    } else if (strcmp(mode, "callsites") == 0) {
        for (long i = 0; i < n; i++) {
            int fd = memfd_create("slabwork", 0);
            if (fd < 0) { perror("memfd_create"); return 1; }
            close(fd);
            for (int k = 0; k < 2; k++) {
                if ((fd = epoll_create1(0)) < 0) { perror("epoll_create1"); return 1; }
                close(fd);
            }
        }
        printf("done %ld memfd %ld epoll %ld\n", 3 * n, n, 2 * n);
        if (!nowait) while (wait_line() >= 0) {}
        return 0;
    } else if (strcmp(mode, "msg") == 0) {
        long size = strtol(path, NULL, 10);
        struct { long mtype; char mtext[8192]; } m = { 1, {0} };
        if (size < 1 || size > (long)sizeof m.mtext) { fprintf(stderr, "msg SIZE: 1..8192\n"); return 2; }
        int q = msgget(IPC_PRIVATE, 0600);
        if (q < 0) { perror("msgget"); return 1; }
        for (long i = 0; i < n; i++) {
            if (msgsnd(q, &m, size, 0) < 0 || msgrcv(q, &m, sizeof m.mtext, 0, 0) < 0) {
                perror("msgsnd/msgrcv");
                msgctl(q, IPC_RMID, NULL);
                return 1;
            }
            done++;
        }
        msgctl(q, IPC_RMID, NULL);
    } else if (strcmp(mode, "open") == 0) {
        if (open_close(path, n) < 0) return 1;
        done = n;
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
    } else if (strcmp(mode, "pipe") == 0) {
        int p[2];
        for (long i = 0; i < n; i++) {
            if (pipe(p) < 0) { perror("pipe"); return 1; }
            close(p[0]);
            close(p[1]);
            done++;
        }
    } else if (strcmp(mode, "iouring") == 0) {
        for (long i = 0; i < n; i++) {
            if (uring_nop() < 0) return 1;
            done++;
        }
    } else if (strcmp(mode, "sleep") == 0) {
        struct timespec ts = { n / 1000, (n % 1000) * 1000000L };
        nanosleep(&ts, NULL);
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
    } else if (strcmp(mode, "eventfdloop") == 0) {
        double end = now() + (double)n, t0 = now();
        long ops = 0;
        while (1) {
            for (int k = 0; k < 1000; k++) {
                int fd = eventfd(0, 0);
                if (fd < 0) { perror("eventfd"); return 1; }
                close(fd);
            }
            ops += 1000;
            if (now() >= end) break;
        }
        printf("ops %ld seconds %.6f\n", ops, now() - t0);
        done = ops;
    } else if (strcmp(mode, "mixloop") == 0) {
        /* one round = 100 filp allocations from 7 kinds of call sites */
        static const struct { const char *name; int per_round; } kinds[] = {
            {"open", 60}, {"eventfd", 20}, {"pipe", 5}, {"socket", 4},
            {"epoll", 3}, {"signalfd", 2}, {"memfd", 1}};
        long made[7] = {0};
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGUSR1);
        double end = now() + (double)n, t0 = now();
        long ops = 0;
        while (1) {
            for (int r = 0; r < 10; r++) {
                int fd, p[2];
                for (int k = 0; k < kinds[0].per_round; k++) {
                    if ((fd = open(path, O_RDONLY)) < 0) { perror("open"); return 1; }
                    close(fd);
                }
                for (int k = 0; k < kinds[1].per_round; k++) {
                    if ((fd = eventfd(0, 0)) < 0) { perror("eventfd"); return 1; }
                    close(fd);
                }
                for (int k = 0; k < kinds[2].per_round; k++) {
                    if (pipe(p) < 0) { perror("pipe"); return 1; }
                    close(p[0]); close(p[1]);
                }
                for (int k = 0; k < kinds[3].per_round; k++) {
                    if ((fd = socket(AF_UNIX, SOCK_DGRAM, 0)) < 0) { perror("socket"); return 1; }
                    close(fd);
                }
                for (int k = 0; k < kinds[4].per_round; k++) {
                    if ((fd = epoll_create1(0)) < 0) { perror("epoll_create1"); return 1; }
                    close(fd);
                }
                for (int k = 0; k < kinds[5].per_round; k++) {
                    if ((fd = signalfd(-1, &mask, 0)) < 0) { perror("signalfd"); return 1; }
                    close(fd);
                }
                for (int k = 0; k < kinds[6].per_round; k++) {
                    if ((fd = memfd_create("slabwork", 0)) < 0) { perror("memfd_create"); return 1; }
                    close(fd);
                }
                for (int k = 0; k < 7; k++) made[k] += kinds[k].per_round;
                ops += 100;
            }
            if (now() >= end) break;
        }
        printf("ops %ld seconds %.6f\n", ops, now() - t0);
        printf("mix");
        for (int k = 0; k < 7; k++) printf(" %s=%ld", kinds[k].name, made[k]);
        printf("\n");
        done = ops;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    if (child > 0) printf("done %ld child %d\n", done, (int)child);
    else printf("done %ld\n", done);
    if (!nowait) while (wait_line() >= 0) {}
    return 0;
}
