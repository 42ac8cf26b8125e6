/* LD_PRELOAD shim for Debian's user-mode-linux 6.1 (lab/vm.sh) on hosts whose XSAVE area is
 * bigger than UML's 832-byte struct _xstate (AVX-512, AMX).
 *
 * UML saves and restores each guest process's FPU state with PTRACE_GETREGSET /
 * PTRACE_SETREGSET NT_X86_XSTATE and an 832-byte buffer. Such a host refuses a SETREGSET
 * that is not the whole XSAVE area (EFAULT: "ptrace set fp regs failed, errno = 14") and
 * the guest's init dies at boot. Here GETREGSET reads the whole area into a buffer kept per
 * traced pid and hands UML its first bytes; SETREGSET lays UML's bytes over that pid's last
 * whole area and sets it whole. The state UML does not know (AVX-512's registers) is the
 * host process's own, so it is right for a single-threaded guest process; guest threads of
 * one process share it, hence lab/vm.sh also turns AVX-512 off in the guest's glibc and
 * OpenSSL. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define FULL 16384 /* bytes: more than any XSAVE area (AMX: 11 008) */
#define SLOTS 256  /* traced host processes remembered (one per guest address space) */

static struct {
    pid_t pid;
    size_t len;
    unsigned char buf[FULL] __attribute__((aligned(64)));
} slots[SLOTS];
static long (*real_ptrace)(int, pid_t, void *, void *);

static int slot(pid_t pid) {
    int i, unused = -1;
    for (i = 0; i < SLOTS; i++) {
        if (slots[i].pid == pid) return i;
        if (unused < 0 && slots[i].pid == 0) unused = i;
    }
    if (unused < 0) unused = (unsigned)pid % SLOTS;
    slots[unused].pid = pid;
    slots[unused].len = 0;
    return unused;
}

long ptrace(enum __ptrace_request request, ...) {
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);
    if (!real_ptrace) real_ptrace = (long (*)(int, pid_t, void *, void *))dlsym(RTLD_NEXT, "ptrace");
    if ((request == PTRACE_GETREGSET || request == PTRACE_SETREGSET) && (long)addr == NT_X86_XSTATE) {
        struct iovec *iov = data;
        int s = slot(pid);
        struct iovec whole = {slots[s].buf, FULL};
        if (request == PTRACE_GETREGSET || slots[s].len == 0) {
            long r = real_ptrace(PTRACE_GETREGSET, pid, addr, &whole);
            if (r < 0) return r;
            slots[s].len = whole.iov_len;
            if (request == PTRACE_GETREGSET) {
                size_t n = iov->iov_len < whole.iov_len ? iov->iov_len : whole.iov_len;
                memcpy(iov->iov_base, slots[s].buf, n);
                iov->iov_len = n;
                return r;
            }
        }
        if (iov->iov_len >= slots[s].len) return real_ptrace(request, pid, addr, data);
        memcpy(slots[s].buf, iov->iov_base, iov->iov_len);
        whole.iov_len = slots[s].len;
        return real_ptrace(PTRACE_SETREGSET, pid, addr, &whole);
    }
    return real_ptrace(request, pid, addr, data);
}
