/*
 * example.c - the seed's example code (P2P Transfer Metrics Guide, "Example Code"), in C.
 *
 * Uses the process-wide default client (NULL), like the Rust global helpers: the sidecar's
 * socket is $P2PM_SOCKET, else /run/p2pmetricsd/ingest.sock.
 *
 *   cc example.c $(pkg-config --cflags --libs p2pmetrics) -o example
 *   P2PM_SOCKET=/tmp/ingest.sock ./example
 *
 * Resulting metrics (checked by Tests/integration/test_c_client.py):
 *   p2p_image_imports_total{artifact_type="microvm"} 1
 *   p2p_bytes_transferred_total{artifact_type="microvm"} 1073741824
 *   p2p_transfers_active 0, p2p_transfer_duration_count 1
 *   p2p_chunks_transferred_total 2, p2p_chunks_deduplicated_total 2,
 *   p2p_bytes_transferred_total 98304
 *   p2p_verification_success{verification_type="nar_hash"} 1
 *   p2p_cache_hits{cache_type="vm_image"} 1
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "p2pmetrics.h"

struct chunk {
    uint64_t size;
    bool already_have;
};

static int failures;

/* Metrics never stop the program: a failed call is only noted. */
static void check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "example: %s: %s\n", what, strerror(-rc));
        failures++;
    }
}

static bool verify_nar_hash(void)
{
    return true;
}

int main(void)
{
    const uint64_t total_size = 1073741824;   /* 1 GiB */

    /* Record successful import */
    check(p2pm_record_image_import(NULL, "microvm", true, total_size), "record_image_import");

    /* Track transfer with duration recording when the guard ends */
    {
        p2pm_transfer guard = p2pm_transfer_start(NULL);
        check(guard.err, "transfer_start");
        struct timespec work = { 0, 50 * 1000 * 1000 };   /* transfer happens here */
        nanosleep(&work, NULL);
        check(p2pm_transfer_end(&guard), "transfer_end");
    }

    /* Record chunk operations */
    const struct chunk chunks[] = {
        { 65536, false }, { 65536, true }, { 32768, false }, { 4096, true },
    };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++)
        check(p2pm_record_chunk_transfer(NULL, chunks[i].size, chunks[i].already_have),
              "record_chunk_transfer");

    /* Record verification result */
    check(p2pm_record_verification(NULL, verify_nar_hash(), "nar_hash"), "record_verification");

    /* VM image cache lookup when starting a VM */
    check(p2pm_record_cache_access(NULL, true, "vm_image"), "record_cache_access");

    check(p2pm_flush(NULL), "flush");
    printf("example: done, %d failed call(s), %llu datagram(s) dropped\n", failures,
           (unsigned long long)p2pm_dropped(NULL));
    return failures ? 1 : 0;
}
