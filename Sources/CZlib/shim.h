#ifndef P2PMETRICSD_CZLIB_SHIM_H
#define P2PMETRICSD_CZLIB_SHIM_H
#include <zlib.h>

/* deflateInit2 is a macro; this is it as a function Swift can call. windowBits 31: gzip wrapper. */
static inline int p2pmd_deflate_init_gzip(z_stream *stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
}

/* inflateInit2 as a function: windowBits 31, a gzip stream only. */
static inline int p2pmd_inflate_init_gzip(z_stream *stream) {
    return inflateInit2(stream, 31);
}
#endif
