#ifndef P2PMETRICSD_CSYSTEMD_SHIM_H
#define P2PMETRICSD_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#endif
