/* Process handles for the exit watcher: pidfd_open (which Glibc's headers may lack), and the
 * open-file limit every pidfd counts against. */
#ifndef P2PMETRICSD_PIDFD_H
#define P2PMETRICSD_PIDFD_H

/* A pidfd for process `pid` (readable once it exits), or a negative errno. */
int p2pmd_pidfd_open(int pid);

/* Raises the soft limit of open files to the hard limit; returns the new soft limit. */
long p2pmd_raise_nofile_limit(void);

#endif
