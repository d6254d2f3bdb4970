/* Batch receive for Unix datagram sockets: recvmmsg with optional SCM_CREDENTIALS, wrapped so
 * that Swift does not have to spell cmsg macros (which it cannot import). */
#ifndef P2PMETRICSD_DATAGRAM_SOCKET_H
#define P2PMETRICSD_DATAGRAM_SOCKET_H

#include <stddef.h>
#include <stdint.h>

/* One slot of a receive batch. The caller owns `buffer` (at least `capacity` bytes). */
typedef struct {
    uint8_t *buffer;
    size_t capacity;
    size_t length;     /* the datagram's real size (more than `capacity` when truncated) */
    int truncated;     /* the datagram was larger than `capacity` */
    int has_credentials;
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} p2pmd_datagram;

/* Receives up to `count` (at most 64) datagrams without blocking. Returns how many were received,
 * 0 when none was waiting, or a negative errno. With `credentials`, each slot carries the
 * sender's kernel-verified pid/uid/gid (the socket needs SO_PASSCRED). */
int p2pmd_receive_batch(int fd, p2pmd_datagram *slots, unsigned count, int credentials);

/* Enables SO_PASSCRED on the socket. Returns 0 or a negative errno. */
int p2pmd_enable_credentials(int fd);

/* Sets the receive buffer, with SO_RCVBUFFORCE when permitted. Returns the size in effect. */
int p2pmd_set_receive_buffer(int fd, int bytes);

/* The socket's type (SOCK_DGRAM, SOCK_STREAM) and family (AF_UNIX, AF_INET...), or -1. */
int p2pmd_socket_type(int fd);
int p2pmd_socket_family(int fd);

/* Binds a non-blocking, close-on-exec AF_UNIX datagram socket at `path` with file mode `mode`.
 * Never removes anything: an existing file at `path` is an error (-EADDRINUSE).
 * Returns the fd or a negative errno. */
int p2pmd_bind_datagram(const char *path, unsigned mode);

/* Connects a throwaway datagram socket to `path`: 0 when something is bound there (live), else
 * the negative errno of connect (-ECONNREFUSED: nobody bound; -EACCES: no write permission...). */
int p2pmd_probe_datagram(const char *path);

struct sockaddr;
/* Binds a non-blocking, close-on-exec UDP socket to `addr` (IPv4 or IPv6).
 * Returns the fd or a negative errno. */
int p2pmd_bind_udp(const struct sockaddr *addr, unsigned length);

/* A pidfd for process `pid` (readable once it exits), or a negative errno. */
int p2pmd_pidfd_open(int pid);

/* Raises the soft limit of open files to the hard limit; returns the new soft limit. */
long p2pmd_raise_nofile_limit(void);

/* Makes a file descriptor non-blocking. */
int p2pmd_set_nonblocking(int fd);

#endif
