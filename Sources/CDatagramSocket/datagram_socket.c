#define _GNU_SOURCE 1
#include "datagram_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_BATCH 64

int p2pmd_receive_batch(int fd, p2pmd_datagram *slots, unsigned count, int credentials) {
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    union {
        char buffer[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control[MAX_BATCH];

    if (count > MAX_BATCH) count = MAX_BATCH;
    memset(messages, 0, sizeof(messages[0]) * count);
    for (unsigned i = 0; i < count; i++) {
        vectors[i].iov_base = slots[i].buffer;
        vectors[i].iov_len = slots[i].capacity;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        if (credentials) {
            messages[i].msg_hdr.msg_control = control[i].buffer;
            messages[i].msg_hdr.msg_controllen = sizeof(control[i].buffer);
        }
    }
    /* MSG_TRUNC: msg_len is the datagram's real length even when it did not fit the slot. */
    int n = recvmmsg(fd, messages, count, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        p2pmd_datagram *slot = &slots[i];
        slot->truncated = (messages[i].msg_hdr.msg_flags & MSG_TRUNC) != 0 || messages[i].msg_len > slot->capacity;
        slot->length = messages[i].msg_len;
        slot->has_credentials = 0;
        if (!credentials) continue;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&messages[i].msg_hdr); c; c = CMSG_NXTHDR(&messages[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                c->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
                struct ucred cred;
                memcpy(&cred, CMSG_DATA(c), sizeof(cred));
                slot->has_credentials = 1;
                slot->pid = cred.pid;
                slot->uid = cred.uid;
                slot->gid = cred.gid;
            }
        }
    }
    return n;
}

int p2pmd_enable_credentials(int fd) {
    int on = 1;
    return setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) == 0 ? 0 : -errno;
}

int p2pmd_set_receive_buffer(int fd, int bytes) {
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    int actual = 0;
    socklen_t len = sizeof(actual);
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &actual, &len) != 0) return -errno;
    return actual;
}

int p2pmd_socket_type(int fd) {
    int type = 0;
    socklen_t len = sizeof(type);
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 ? type : -1;
}

int p2pmd_socket_family(int fd) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) return -1;
    return addr.ss_family;
}

int p2pmd_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -errno;
    return 0;
}

static int unix_address(const char *path, struct sockaddr_un *addr) {
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(addr->sun_path)) return -ENAMETOOLONG;
    memcpy(addr->sun_path, path, len + 1);
    return 0;
}

int p2pmd_probe_datagram(const char *path) {
    struct sockaddr_un addr;
    int rc = unix_address(path, &addr);
    if (rc != 0) return rc;
    int probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return -errno;
    rc = connect(probe, (struct sockaddr *)&addr, sizeof(addr)) == 0 ? 0 : -errno;
    close(probe);
    return rc;
}

int p2pmd_bind_datagram(const char *path, unsigned mode) {
    struct sockaddr_un addr;
    int rc = unix_address(path, &addr);
    if (rc != 0) return rc;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    mode_t old = umask(0777 & ~mode);
    rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    int err = errno;
    umask(old);
    if (rc != 0) { close(fd); return -err; }
    if (chmod(path, mode) != 0) { err = errno; close(fd); unlink(path); return -err; }
    return fd;
}

int p2pmd_bind_udp(const struct sockaddr *addr, unsigned length) {
    int fd = socket(addr->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (addr->sa_family == AF_INET6) {
        int off = 0; /* [::]:PORT means IPv4 too, whatever net.ipv6.bindv6only says (as libuv does for TCP) */
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    }
    if (bind(fd, addr, (socklen_t)length) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int p2pmd_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
#else
    (void)pid;
    return -ENOSYS;
#endif
}

long p2pmd_raise_nofile_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -errno;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &limit);
        (void)getrlimit(RLIMIT_NOFILE, &limit);
    }
    return (long)limit.rlim_cur;
}
