/* floor-recv: the kernel floor for p2pmetricsd's ingest path. Binds a Unix datagram socket,
 * waits for readability like the daemon's libuv loop (poll), then drains it with recvmmsg in
 * batches of 64 (up to 32 batches per wakeup, 64 KiB slots, 8 MiB receive buffer - the daemon's
 * settings), and touches every byte (sums them) without parsing anything.
 *
 *   floor-recv --socket PATH --stats FILE
 *
 * Counters live in FILE (mmap'd, 4 KiB): [0] datagrams, [1] bytes, [2] byte sum, [3] batches.
 * SIGTERM/SIGINT end it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BATCH 64
#define SLOT 65536

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    const char *path = NULL, *stats_path = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--socket")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--stats")) stats_path = argv[i + 1];
    }
    if (!path || !stats_path) { fprintf(stderr, "usage: floor-recv --socket PATH --stats FILE\n"); return 2; }

    int sfd = open(stats_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (sfd < 0 || ftruncate(sfd, 4096) != 0) { perror("floor-recv: stats file"); return 2; }
    volatile uint64_t *stats = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    if (stats == MAP_FAILED) { perror("floor-recv: mmap"); return 2; }
    close(sfd);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (fd < 0 || strlen(path) >= sizeof addr.sun_path) { perror("floor-recv: socket"); return 2; }
    strcpy(addr.sun_path, path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("floor-recv: bind"); return 2; }
    int rcvbuf = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    unsigned char *buffers = malloc((size_t)BATCH * SLOT);
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buffers + (size_t)i * SLOT;
        iov[i].iov_len = SLOT;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t datagrams = 0, bytes = 0, sum = 0, batches = 0;
    fprintf(stderr, "floor-recv: listening on %s\n", path);
    while (!stop) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, 100);
        if (pr <= 0) continue;
        for (int b = 0; b < 32; b++) {
            int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            batches++;
            for (int i = 0; i < n; i++) {
                const unsigned char *d = iov[i].iov_base;
                unsigned len = msgs[i].msg_len;
                uint64_t s = 0;
                for (unsigned k = 0; k < len; k++) s += d[k];
                sum += s;
                bytes += len;
            }
            datagrams += (uint64_t)n;
            __atomic_store_n(&stats[1], bytes, __ATOMIC_RELAXED);
            __atomic_store_n(&stats[2], sum, __ATOMIC_RELAXED);
            __atomic_store_n(&stats[3], batches, __ATOMIC_RELAXED);
            __atomic_store_n(&stats[0], datagrams, __ATOMIC_RELEASE);
            if (n < BATCH) break;
        }
    }
    unlink(path);
    fprintf(stderr, "floor-recv: %llu datagrams, %llu bytes, sum %llu\n", (unsigned long long)datagrams,
            (unsigned long long)bytes, (unsigned long long)sum);
    return 0;
}
