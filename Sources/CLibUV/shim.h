#ifndef P2PMETRICSD_CLIBUV_SHIM_H
#define P2PMETRICSD_CLIBUV_SHIM_H
#include <uv.h>
#endif
