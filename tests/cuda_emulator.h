/* What nvcc and NVRTC provide implicitly, and a scheduler that runs each
 * kernel with its real grid, for compiling generated CUDA as host C++.
 *
 * tests/cuda_emulator.py passes this file to g++ with -include, defines
 * MOCHAC_EMU_THREADS (threads per block), and rewrites every kernel header
 * into a wrapper that calls mochac_emu_launch. Each CUDA thread is a
 * coroutine with its own stack, and all of them run on the calling OS thread.
 * Blocks run one after another. Within a block the scheduler resumes every
 * thread up to its next __syncthreads (a phase), then the next phase, until
 * all threads return.
 *
 * Compiled with -fsanitize=thread (and MOCHAC_EMU_RACES defined), every
 * load and store of the kernels calls the __tsan_* hooks below, which stand
 * in for ThreadSanitizer's runtime: they report two accesses to one address
 * by different threads of a launch, at least one a store, that no barrier
 * orders. No libtsan is linked.
 */

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef MOCHAC_EMU_THREADS
#error "define MOCHAC_EMU_THREADS, the threads per block"
#endif

/* Stack bytes per emulated thread. Kernels use a few hundred bytes, the
   libm calls a few kilobytes. */
#define MOCHAC_EMU_STACK_BYTES (64 * 1024)

#define __global__
#define __device__
#define __shared__ static __attribute__((section("mochac_emu_shared")))
#define __syncthreads() mochac_emu_syncthreads(__LINE__)
#define MOCHAC_EMU_BODY(name) mochac_emu_body_##name
/* Marks the scheduler and the race hooks, so their own loads and stores are
   not instrumented. */
#define MOCHAC_EMU_UNTRACKED __attribute__((no_sanitize_thread))

struct mochac_index { unsigned x; };
/* The running thread's coordinates: the scheduler sets them before it
   resumes a thread. They have external linkage, so the compiler reloads
   them after every call into the scheduler. */
__attribute__((visibility("hidden"))) mochac_index threadIdx, blockIdx, blockDim, gridDim;

/* The section's bounds, defined by the linker when some variable is
   __shared__ and null otherwise. */
extern char __start_mochac_emu_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_mochac_emu_shared[] __attribute__((weak, visibility("hidden")));

enum { MOCHAC_EMU_READY, MOCHAC_EMU_WAITING, MOCHAC_EMU_RETURNED };

/* On x86-64 a thread is its saved stack pointer, and mochac_emu_switch
   (below) switches threads without a system call. Elsewhere, or with
   MOCHAC_EMU_UCONTEXT defined, it is a ucontext, and glibc's swapcontext
   saves and restores the signal mask with a system call on every switch. */
#if defined(__x86_64__) && !defined(MOCHAC_EMU_UCONTEXT)
#define MOCHAC_EMU_OWN_SWITCH 1
#endif

struct mochac_emu_thread {
#ifdef MOCHAC_EMU_OWN_SWITCH
    void *stack_pointer;
#else
    ucontext_t context;
#endif
    int state;
    int line;  /* the line of the __syncthreads it waits at */
};

static struct mochac_emu_thread mochac_emu_threads[MOCHAC_EMU_THREADS];
static struct mochac_emu_thread *mochac_emu_current;
#ifdef MOCHAC_EMU_OWN_SWITCH
static void *mochac_emu_scheduler;
#else
static ucontext_t mochac_emu_scheduler, mochac_emu_fresh;
#endif
static char *mochac_emu_stacks;
static size_t mochac_emu_stacks_size;
static void (*mochac_emu_body)(void *);
static void *mochac_emu_closure;
/* Barriers the running block has passed. */
static int mochac_emu_epoch;
/* Held for the whole of a launch, because the scheduler's state is global
   and ctypes lets two Python threads call kernels at once. */
static pthread_mutex_t mochac_emu_lock = PTHREAD_MUTEX_INITIALIZER;

/* What a caller sets and reads around a launch is per OS thread. */
static thread_local char mochac_emu_error_text[1024];
/* The next launch's grid, order and seed. A launch resets them to one
   block in forward order. */
static thread_local unsigned mochac_emu_next_blocks = 1;
static thread_local int mochac_emu_next_order = 0;
static thread_local unsigned long long mochac_emu_next_seed = 0;

extern "C" MOCHAC_EMU_UNTRACKED void mochac_emu_configure(unsigned blocks, int order,
                                                          unsigned long long seed)
{
    mochac_emu_next_blocks = blocks;
    mochac_emu_next_order = order;
    mochac_emu_next_seed = seed;
}

/* The first error of the last launch, or an empty string. */
extern "C" MOCHAC_EMU_UNTRACKED const char *mochac_emu_error(void)
{
    return mochac_emu_error_text;
}

static MOCHAC_EMU_UNTRACKED void mochac_emu_fail(const char *format, ...)
{
    if (mochac_emu_error_text[0])
        return;
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(mochac_emu_error_text, sizeof mochac_emu_error_text, format, arguments);
    va_end(arguments);
}

/* ---- Race detection ----
 *
 * A table keyed by address keeps, for the current launch, the last store
 * and the latest two loads by different threads. Two accesses conflict when
 * different threads made them and either they are in different blocks
 * (blocks run in any order on a device) or in the same block and phase.
 * Shared memory is per block, so an access from an earlier block to a
 * __shared__ address is forgotten. Accesses to the thread stacks are
 * private and not recorded.
 *
 * NOTE: the key is the address an access starts at, so two accesses of
 * different sizes that overlap at different starts are not compared, and a
 * range access (a struct copy) is recorded at its first byte only. */

struct mochac_emu_actor {
    unsigned thread;  /* threadIdx.x + 1; 0 for none */
    unsigned block;
    int epoch;
};

struct mochac_emu_record {
    uintptr_t address;
    unsigned long long launch;  /* the launch that wrote the entry */
    struct mochac_emu_actor store, loads[2];
};

static struct mochac_emu_record *mochac_emu_table;
static size_t mochac_emu_table_size, mochac_emu_table_used;
static unsigned long long mochac_emu_launch_count;
static int mochac_emu_tracking;
static thread_local uintptr_t mochac_emu_race_at;

/* The address of the first race of the last launch, or 0. */
extern "C" MOCHAC_EMU_UNTRACKED uintptr_t mochac_emu_race_address(void)
{
    return mochac_emu_race_at;
}

static MOCHAC_EMU_UNTRACKED size_t mochac_emu_slot_of(uintptr_t address, size_t size)
{
    unsigned long long z = (unsigned long long)address * 0x9E3779B97F4A7C15ULL;
    return (size_t)(z >> 20) & (size - 1);
}

/* Double the table, keeping this launch's entries. Return 0 when out of memory. */
static MOCHAC_EMU_UNTRACKED int mochac_emu_grow_table(void)
{
    size_t size = mochac_emu_table_size ? 2 * mochac_emu_table_size : 1 << 16;
    struct mochac_emu_record *table =
        (struct mochac_emu_record *)calloc(size, sizeof *table);
    if (!table)
        return 0;
    for (size_t i = 0; i < mochac_emu_table_size; ++i) {
        struct mochac_emu_record *old = &mochac_emu_table[i];
        if (old->launch != mochac_emu_launch_count)
            continue;
        size_t slot = mochac_emu_slot_of(old->address, size);
        while (table[slot].launch == mochac_emu_launch_count)
            slot = (slot + 1) & (size - 1);
        table[slot] = *old;
    }
    free(mochac_emu_table);
    mochac_emu_table = table;
    mochac_emu_table_size = size;
    return 1;
}

/* The entry of an address in this launch, new and empty if there was none.
   Entries of earlier launches count as free slots, so no launch clears the
   table. */
static MOCHAC_EMU_UNTRACKED struct mochac_emu_record *mochac_emu_record_of(uintptr_t address)
{
    if (2 * (mochac_emu_table_used + 1) > mochac_emu_table_size && !mochac_emu_grow_table())
        return NULL;
    size_t mask = mochac_emu_table_size - 1;
    size_t slot = mochac_emu_slot_of(address, mochac_emu_table_size);
    while (mochac_emu_table[slot].launch == mochac_emu_launch_count) {
        if (mochac_emu_table[slot].address == address)
            return &mochac_emu_table[slot];
        slot = (slot + 1) & mask;
    }
    struct mochac_emu_record *record = &mochac_emu_table[slot];
    memset(record, 0, sizeof *record);
    record->address = address;
    record->launch = mochac_emu_launch_count;
    ++mochac_emu_table_used;
    return record;
}

static MOCHAC_EMU_UNTRACKED int mochac_emu_conflicts(struct mochac_emu_actor before,
                                                     struct mochac_emu_actor now)
{
    if (before.thread == 0)
        return 0;
    if (before.block != now.block)
        return 1;
    return before.thread != now.thread && before.epoch == now.epoch;
}

static MOCHAC_EMU_UNTRACKED void mochac_emu_report(uintptr_t address,
                                                   struct mochac_emu_actor before,
                                                   const char *before_kind,
                                                   struct mochac_emu_actor now,
                                                   const char *now_kind)
{
    if (mochac_emu_race_at)
        return;
    mochac_emu_race_at = address;
    mochac_emu_fail("data race at address 0x%llx: thread %u of block %u %s it and "
                    "thread %u of block %u %s it %s",
                    (unsigned long long)address, before.thread - 1, before.block,
                    before_kind, now.thread - 1, now.block, now_kind,
                    before.block == now.block ? "with no barrier in between"
                                              : "from different blocks");
}

static MOCHAC_EMU_UNTRACKED void mochac_emu_access(void *pointer, int store)
{
    char *address = (char *)pointer;
    if (!mochac_emu_tracking)
        return;
    if (address >= mochac_emu_stacks && address < mochac_emu_stacks + mochac_emu_stacks_size)
        return;
    struct mochac_emu_record *record = mochac_emu_record_of((uintptr_t)address);
    if (!record) {
        mochac_emu_fail("out of memory for the race detector's table");
        mochac_emu_tracking = 0;
        return;
    }
    struct mochac_emu_actor now = {threadIdx.x + 1, blockIdx.x, mochac_emu_epoch};
    if (address >= __start_mochac_emu_shared && address < __stop_mochac_emu_shared) {
        if (record->store.block != now.block)
            record->store.thread = 0;
        for (int i = 0; i < 2; ++i)
            if (record->loads[i].block != now.block)
                record->loads[i].thread = 0;
    }
    const char *kind = store ? "stores to" : "loads";
    if (mochac_emu_conflicts(record->store, now))
        mochac_emu_report(record->address, record->store, "stores to", now, kind);
    if (store) {
        for (int i = 0; i < 2; ++i)
            if (mochac_emu_conflicts(record->loads[i], now))
                mochac_emu_report(record->address, record->loads[i], "loads", now, kind);
        record->store = now;
        record->loads[0].thread = record->loads[1].thread = 0;
        return;
    }
    /* Keep this thread's load and the latest load by another thread. */
    if (record->loads[0].thread == now.thread && record->loads[0].block == now.block) {
        record->loads[0] = now;
    } else {
        record->loads[1] = record->loads[0];
        record->loads[0] = now;
    }
}

/* The hooks GCC's -fsanitize=thread calls (GCC 12; a missing one fails the
   link, since tests/cuda_emulator.py links with -z defs). */
extern "C" {
MOCHAC_EMU_UNTRACKED void __tsan_init(void) {}
MOCHAC_EMU_UNTRACKED void __tsan_func_entry(void *) {}
MOCHAC_EMU_UNTRACKED void __tsan_func_exit(void) {}
#define MOCHAC_EMU_HOOKS(size)                                                             \
    MOCHAC_EMU_UNTRACKED void __tsan_read##size(void *p) { mochac_emu_access(p, 0); }     \
    MOCHAC_EMU_UNTRACKED void __tsan_write##size(void *p) { mochac_emu_access(p, 1); }    \
    MOCHAC_EMU_UNTRACKED void __tsan_unaligned_read##size(void *p) { mochac_emu_access(p, 0); } \
    MOCHAC_EMU_UNTRACKED void __tsan_unaligned_write##size(void *p) { mochac_emu_access(p, 1); }
MOCHAC_EMU_HOOKS(1)
MOCHAC_EMU_HOOKS(2)
MOCHAC_EMU_HOOKS(4)
MOCHAC_EMU_HOOKS(8)
MOCHAC_EMU_HOOKS(16)
MOCHAC_EMU_UNTRACKED void __tsan_read_range(void *p, unsigned long) { mochac_emu_access(p, 0); }
MOCHAC_EMU_UNTRACKED void __tsan_write_range(void *p, unsigned long) { mochac_emu_access(p, 1); }
}

/* ---- Scheduler ---- */

/* splitmix64, for the shuffled orders. */
static MOCHAC_EMU_UNTRACKED unsigned long long mochac_emu_random(unsigned long long *state)
{
    unsigned long long z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Fill items with 0..n-1 in the given order: 0 forward, 1 reverse, 2 shuffled. */
static MOCHAC_EMU_UNTRACKED void mochac_emu_order(unsigned *items, unsigned n, int order,
                                                  unsigned long long *state)
{
    for (unsigned i = 0; i < n; ++i)
        items[i] = order == 1 ? n - 1 - i : i;
    if (order == 2)
        for (unsigned i = n; i > 1; --i) {
            unsigned j = (unsigned)(mochac_emu_random(state) % i);
            unsigned swap = items[i - 1];
            items[i - 1] = items[j];
            items[j] = swap;
        }
}

/* ---- Thread switches ---- */

#ifdef MOCHAC_EMU_OWN_SWITCH
/* Save the registers that the System V x86-64 ABI makes callee-saved (rbp,
   rbx, r12-r15, MXCSR and the x87 control word) on the current stack, and
   store the stack pointer at *save. Then load ``load`` as the stack pointer
   and restore the registers saved there. */
extern "C" __attribute__((visibility("hidden"))) void mochac_emu_switch(void **save,
                                                                        void *load);
__asm__(".text\n"
        ".globl mochac_emu_switch\n"
        ".hidden mochac_emu_switch\n"
        ".type mochac_emu_switch, @function\n"
        "mochac_emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size mochac_emu_switch, .-mochac_emu_switch\n");
#endif

/* Switch from the running thread to the scheduler. */
static MOCHAC_EMU_UNTRACKED void mochac_emu_yield(struct mochac_emu_thread *thread)
{
#ifdef MOCHAC_EMU_OWN_SWITCH
    mochac_emu_switch(&thread->stack_pointer, mochac_emu_scheduler);
#else
    swapcontext(&thread->context, &mochac_emu_scheduler);
#endif
}

/* Switch from the scheduler to ``thread``. */
static MOCHAC_EMU_UNTRACKED void mochac_emu_resume(struct mochac_emu_thread *thread)
{
#ifdef MOCHAC_EMU_OWN_SWITCH
    mochac_emu_switch(&mochac_emu_scheduler, thread->stack_pointer);
#else
    swapcontext(&mochac_emu_scheduler, &thread->context);
#endif
}

extern "C" MOCHAC_EMU_UNTRACKED void mochac_emu_syncthreads(int line)
{
    struct mochac_emu_thread *thread = mochac_emu_current;
    thread->state = MOCHAC_EMU_WAITING;
    thread->line = line;
    mochac_emu_yield(thread);
}

/* A thread's entry point. A returned thread is never resumed: the next
   block starts every thread afresh. */
static MOCHAC_EMU_UNTRACKED void mochac_emu_thread_main(void)
{
    mochac_emu_body(mochac_emu_closure);
    mochac_emu_current->state = MOCHAC_EMU_RETURNED;
    mochac_emu_yield(mochac_emu_current);
    abort();
}

/* Make ``thread`` start at mochac_emu_thread_main on the stack of ``size``
   bytes at ``low``. */
static MOCHAC_EMU_UNTRACKED void mochac_emu_start(struct mochac_emu_thread *thread,
                                                  char *low, size_t size)
{
#ifdef MOCHAC_EMU_OWN_SWITCH
    /* The frame mochac_emu_switch restores, from the top of the stack down:
       a null return address for mochac_emu_thread_main, then the address
       the switch returns to, mochac_emu_thread_main. That slot is 16-byte
       aligned, so the function starts with the stack aligned as after a
       call. Below them lie six zero registers, and MXCSR and the x87
       control word as the scheduler has them. */
    uintptr_t top = ((uintptr_t)low + size) & ~(uintptr_t)15;
    void **frame = (void **)(top - 9 * sizeof(void *));
    memset(frame, 0, 9 * sizeof(void *));
    frame[7] = (void *)mochac_emu_thread_main;
    unsigned mxcsr = __builtin_ia32_stmxcsr();
    unsigned short control;
    __asm__ volatile("fnstcw %0" : "=m"(control));
    memcpy(frame, &mxcsr, sizeof mxcsr);
    memcpy((char *)frame + 4, &control, sizeof control);
    thread->stack_pointer = frame;
#else
    thread->context = mochac_emu_fresh;
    thread->context.uc_stack.ss_sp = low;
    thread->context.uc_stack.ss_size = size;
    thread->context.uc_link = &mochac_emu_scheduler;
    makecontext(&thread->context, mochac_emu_thread_main, 0);
#endif
}

/* The word at the bottom of every stack: a block that leaves it changed
   has overflowed a stack. Canaries instead of guard pages keep the stacks
   one mapping per library, so that many libraries in one process stay
   under the kernel's limit on mappings (vm.max_map_count). */
#define MOCHAC_EMU_CANARY 0x6D6F636861637374ULL

/* Map the stacks, one region, on the first launch. */
static MOCHAC_EMU_UNTRACKED int mochac_emu_map_stacks(void)
{
    if (mochac_emu_stacks)
        return 1;
    size_t size = (size_t)MOCHAC_EMU_STACK_BYTES * MOCHAC_EMU_THREADS;
    char *memory = (char *)mmap(NULL, size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED)
        return 0;
#ifndef MOCHAC_EMU_OWN_SWITCH
    if (getcontext(&mochac_emu_fresh) != 0) {
        munmap(memory, size);
        return 0;
    }
#endif
    mochac_emu_stacks = memory;
    mochac_emu_stacks_size = size;
    return 1;
}

/* Return whether every stack's canary word is unchanged. */
static MOCHAC_EMU_UNTRACKED int mochac_emu_stacks_intact(void)
{
    for (unsigned i = 0; i < MOCHAC_EMU_THREADS; ++i) {
        const char *bottom = mochac_emu_stacks + (size_t)i * MOCHAC_EMU_STACK_BYTES;
        if (*(const unsigned long long *)bottom != MOCHAC_EMU_CANARY)
            return 0;
    }
    return 1;
}

/* Run one block: its threads in phases, until every thread returned.
   Return 0 after recording an error. */
static MOCHAC_EMU_UNTRACKED int mochac_emu_run_block(int order,
                                                     unsigned long long *random_state)
{
    /* Each stack starts above its canary word. */
    const size_t canary = sizeof(unsigned long long);
    for (unsigned i = 0; i < MOCHAC_EMU_THREADS; ++i) {
        struct mochac_emu_thread *thread = &mochac_emu_threads[i];
        char *bottom = mochac_emu_stacks + (size_t)i * MOCHAC_EMU_STACK_BYTES;
        *(unsigned long long *)bottom = MOCHAC_EMU_CANARY;
        mochac_emu_start(thread, bottom + canary, MOCHAC_EMU_STACK_BYTES - canary);
        thread->state = MOCHAC_EMU_READY;
    }
    unsigned sequence[MOCHAC_EMU_THREADS];
    for (mochac_emu_epoch = 0;; ++mochac_emu_epoch) {
        mochac_emu_order(sequence, MOCHAC_EMU_THREADS, order, random_state);
        for (unsigned i = 0; i < MOCHAC_EMU_THREADS; ++i) {
            mochac_emu_current = &mochac_emu_threads[sequence[i]];
            threadIdx.x = sequence[i];
            mochac_emu_resume(mochac_emu_current);
        }
        int waiting = -1, returned = -1;
        for (unsigned i = 0; i < MOCHAC_EMU_THREADS; ++i) {
            if (mochac_emu_threads[i].state == MOCHAC_EMU_WAITING && waiting < 0)
                waiting = (int)i;
            if (mochac_emu_threads[i].state == MOCHAC_EMU_RETURNED && returned < 0)
                returned = (int)i;
        }
        if (waiting < 0)
            return 1;
        if (returned >= 0) {
            mochac_emu_fail("divergent __syncthreads in block %u: thread %d waits at "
                            "barrier %d (line %d), but thread %d returned after %d barriers",
                            blockIdx.x, waiting, mochac_emu_epoch + 1,
                            mochac_emu_threads[waiting].line, returned, mochac_emu_epoch);
            return 0;
        }
        for (unsigned i = 0; i < MOCHAC_EMU_THREADS; ++i) {
            if (mochac_emu_threads[i].line != mochac_emu_threads[waiting].line) {
                mochac_emu_fail("divergent __syncthreads in block %u: at barrier %d, "
                                "thread %d waits at line %d and thread %u at line %d",
                                blockIdx.x, mochac_emu_epoch + 1, waiting,
                                mochac_emu_threads[waiting].line, i,
                                mochac_emu_threads[i].line);
                return 0;
            }
            mochac_emu_threads[i].state = MOCHAC_EMU_READY;
        }
    }
}

/* Run a kernel body on the configured grid. */
static MOCHAC_EMU_UNTRACKED void mochac_emu_launch(void (*body)(void *), void *closure)
{
    unsigned blocks = mochac_emu_next_blocks;
    int order = mochac_emu_next_order;
    unsigned long long random_state = mochac_emu_next_seed;
    mochac_emu_next_blocks = 1;
    mochac_emu_next_order = 0;
    mochac_emu_next_seed = 0;
    mochac_emu_error_text[0] = 0;
    mochac_emu_race_at = 0;
    if (blocks == 0 || order < 0 || order > 2) {
        mochac_emu_fail("invalid launch: %u blocks in order %d", blocks, order);
        return;
    }
    unsigned *block_sequence = (unsigned *)malloc(blocks * sizeof *block_sequence);
    if (!block_sequence) {
        mochac_emu_fail("failed to allocate the order of %u blocks", blocks);
        return;
    }
    mochac_emu_order(block_sequence, blocks, order, &random_state);
    pthread_mutex_lock(&mochac_emu_lock);
    if (!mochac_emu_map_stacks()) {
        pthread_mutex_unlock(&mochac_emu_lock);
        free(block_sequence);
        mochac_emu_fail("failed to map %d thread stacks", MOCHAC_EMU_THREADS);
        return;
    }
    mochac_emu_body = body;
    mochac_emu_closure = closure;
    blockDim.x = MOCHAC_EMU_THREADS;
    gridDim.x = blocks;
    ++mochac_emu_launch_count;
    mochac_emu_table_used = 0;
#ifdef MOCHAC_EMU_RACES
    mochac_emu_tracking = 1;
#endif
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx.x = block_sequence[b];
        if (__start_mochac_emu_shared)
            memset(__start_mochac_emu_shared, 0xFF,
                   (size_t)(__stop_mochac_emu_shared - __start_mochac_emu_shared));
        if (!mochac_emu_run_block(order, &random_state))
            break;
        if (!mochac_emu_stacks_intact()) {
            mochac_emu_fail("a thread of block %u overflowed its %d-byte stack",
                            blockIdx.x, MOCHAC_EMU_STACK_BYTES);
            break;
        }
    }
    mochac_emu_tracking = 0;
    pthread_mutex_unlock(&mochac_emu_lock);
    free(block_sequence);
}

template <class Function> static void mochac_emu_invoke(void *function)
{
    (*static_cast<Function *>(function))();
}

/* ---- CUDA intrinsics ---- */

static inline double __longlong_as_double(long long bits)
{
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
/* Atomic as it is: no other emulated thread runs until this one reaches a
   barrier or returns. Its accesses are not recorded as racing. */
static inline MOCHAC_EMU_UNTRACKED int atomicCAS(int *address, int compare, int value)
{
    int old = *address;
    if (old == compare)
        *address = value;
    return old;
}
