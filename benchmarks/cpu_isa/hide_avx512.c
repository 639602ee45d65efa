/*
 * Run a process as if its CPU were AVX2-only: loaded with LD_PRELOAD (see as_avx2.sh), it hides AVX-512, AVX-VNNI
 * and AMX from the process, so that torch, oneDNN, ONNX Runtime and OpenVINO choose the kernels they would choose on
 * an AVX2-only CPU (a 2nd/3rd generation EPYC), on a CPU that has the rest.
 *
 * Why it works: the libraries pick their kernels by the CPUID instruction. Linux can make CPUID fault in user space
 * (arch_prctl ARCH_SET_CPUID, where /proc/cpuinfo lists cpuid_fault); the SIGSEGV handler below then answers each
 * CPUID itself, with those feature bits cleared. Code that reads /proc/cpuinfo instead gets a copy without those
 * flags. Faulting is reset by execve, so each child process re-installs it (LD_PRELOAD is inherited).
 *
 * Limits: the cores still execute AVX2 at their own width and clock, so ratios between backends carry over to an
 * AVX2-only CPU better than absolute times do; glibc's own CPUID reads (before this library loads) are not hidden; a
 * library that installs its own SIGSEGV handler afterwards (Python's faulthandler) breaks the emulation.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* CPUID leaf 7 sub-leaf 0: AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL (EBX); VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ (ECX);
 * 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 (EDX). Sub-leaf 1: AVX-VNNI, AVX512-BF16. */
static const uint32_t HIDDEN_7_0_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
static const uint32_t HIDDEN_7_0_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const uint32_t HIDDEN_7_0_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
static const uint32_t HIDDEN_7_1_EAX = BIT(4) | BIT(5);

static struct sigaction previous_handler;
static char *masked_cpuinfo;
static size_t masked_cpuinfo_size;

static long set_cpuid_faulting(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void answer_cpuid(greg_t *registers) {
    uint32_t leaf = (uint32_t)registers[REG_RAX], subleaf = (uint32_t)registers[REG_RCX], a, b, c, d;
    set_cpuid_faulting(0);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(subleaf));
    set_cpuid_faulting(1);
    if (leaf == 7 && subleaf == 0) {
        b &= ~HIDDEN_7_0_EBX;
        c &= ~HIDDEN_7_0_ECX;
        d &= ~HIDDEN_7_0_EDX;
    } else if (leaf == 7 && subleaf == 1) {
        a &= ~HIDDEN_7_1_EAX;
    }
    registers[REG_RAX] = a;
    registers[REG_RBX] = b;
    registers[REG_RCX] = c;
    registers[REG_RDX] = d;
    registers[REG_RIP] += 2; /* CPUID is two bytes, 0F A2 */
}

static void on_segv(int signal, siginfo_t *info, void *context) {
    (void)signal;
    (void)info;
    greg_t *registers = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *instruction = (const unsigned char *)registers[REG_RIP];
    if (instruction[0] == 0x0f && instruction[1] == 0xa2) {
        answer_cpuid(registers);
        return;
    }
    sigaction(SIGSEGV, &previous_handler, NULL); /* a real fault: returning re-runs it under the old handler */
}

static int hidden_flag(const char *flag, size_t length) {
    return (length > 6 && strncmp(flag, "avx512", 6) == 0) || (length >= 3 && strncmp(flag, "amx", 3) == 0) ||
           (length == 8 && strncmp(flag, "avx_vnni", 8) == 0);
}

/* /proc/cpuinfo without the hidden flags, built once (reading it goes through raw syscalls, not the wrappers). */
static void build_masked_cpuinfo(void) {
    size_t capacity = 1 << 16, size = 0;
    char *original = malloc(capacity + 1);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/cpuinfo", O_RDONLY);
    for (ssize_t got; fd >= 0 && (got = read(fd, original + size, capacity - size)) > 0;) {
        size += (size_t)got;
        if (size == capacity) original = realloc(original, (capacity *= 2) + 1);
    }
    if (fd >= 0) close(fd);
    original[size] = '\0'; /* strcspn below stops here */
    masked_cpuinfo = malloc(size + 1);
    for (size_t at = 0; at < size;) {
        size_t length = strcspn(original + at, " \t\n");
        int after_space = masked_cpuinfo_size && masked_cpuinfo[masked_cpuinfo_size - 1] == ' ';
        if (length == 0) {
            length = 1; /* a separator */
        } else if (after_space && hidden_flag(original + at, length)) {
            at += length;
            masked_cpuinfo_size--; /* drop the space before it too */
            continue;
        }
        memcpy(masked_cpuinfo + masked_cpuinfo_size, original + at, length);
        masked_cpuinfo_size += length;
        at += length;
    }
    free(original);
}

static int masked_cpuinfo_fd(void) {
    int fd = memfd_create("cpuinfo", MFD_CLOEXEC);
    if (fd >= 0 && write(fd, masked_cpuinfo, masked_cpuinfo_size) != (ssize_t)masked_cpuinfo_size) {
        close(fd);
        return -1;
    }
    if (fd >= 0) lseek(fd, 0, SEEK_SET);
    return fd;
}

static int open_with(int directory, const char *path, int flags, va_list rest) {
    if (strcmp(path, "/proc/cpuinfo") == 0) return masked_cpuinfo_fd();
    int needs_mode = (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE; /* as glibc's __OPEN_NEEDS_MODE */
    mode_t mode = needs_mode ? va_arg(rest, mode_t) : 0;
    return (int)syscall(SYS_openat, directory, path, flags, mode);
}

#define OPEN_WRAPPER(name)                                    \
    int name(const char *path, int flags, ...) {              \
        va_list rest;                                         \
        va_start(rest, flags);                                \
        int fd = open_with(AT_FDCWD, path, flags, rest);      \
        va_end(rest);                                         \
        return fd;                                            \
    }
#define OPENAT_WRAPPER(name)                                            \
    int name(int directory, const char *path, int flags, ...) {         \
        va_list rest;                                                   \
        va_start(rest, flags);                                          \
        int fd = open_with(directory, path, flags, rest);               \
        va_end(rest);                                                   \
        return fd;                                                      \
    }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

__attribute__((constructor)) static void hide_avx512(void) {
    build_masked_cpuinfo();
    struct sigaction handler;
    memset(&handler, 0, sizeof handler);
    handler.sa_sigaction = on_segv;
    handler.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &handler, &previous_handler);
    if (set_cpuid_faulting(1) != 0) {
        perror("hide_avx512: this CPU or kernel cannot make CPUID fault (no cpuid_fault in /proc/cpuinfo)");
        _exit(70);
    }
}
