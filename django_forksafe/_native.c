/*
 * django_forksafe._native: every inherited database socket silenced inside
 * fork() itself, before any code of the child runs.
 *
 * What it does, and why here: a pthread_atfork() child handler, registered at
 * import, runs in the child of every fork() made through the C library
 * (os.fork, multiprocessing, gunicorn, Celery, uWSGI's workers, mules and
 * spooler, C extensions), before any code of the child, Python or C. It puts
 * a dead end over every socket whose peer is a recorded database endpoint,
 * keeping the descriptor's close-on-exec flag. The child's drivers then see
 * an ordinary lost connection, and nothing it sends reaches the parent's
 * sessions: the dead end is one end of a Unix SOCK_SEQPACKET socket pair
 * whose other end is closed. A write fails with EPIPE and raises no SIGPIPE
 * (a stream socket's would, killing a child that set it to SIG_DFL), an
 * error every driver and OpenSSL take as fatal (an unconnected socket's
 * ENOTCONN is one OpenSSL retries, for ever); a read, blocking or not, gets
 * end of file, and poll() says POLLHUP at once.
 *
 * What it may do: async-signal-safe system calls only (man 7 signal-safety):
 * getpid, open, read, poll, select, getpeername, fstat, fcntl, socketpair, dup3,
 * close; each retried when a signal interrupts it (EINTR). And, first, on
 * CPython 3.13 and later, what os.fork() does for CPython's locks in every
 * child (parking_lot_after_fork, below): a fork behind Python's back skips it.
 *
 * What it may not do: call Python, allocate, take a lock, or touch anything
 * but the descriptors it silences (and CPython's parking lot, as os.fork()
 * does, with memory writes alone). Django's state (wrappers, pools,
 * transactions, SQLite handles) is the Python at-fork handler's and the
 * checkout check's (django_forksafe.registry).
 *
 * The endpoint table is written by one thread at a time (a spin lock: the
 * GIL may not be there, on free-threaded CPython) and published entry by
 * entry (the count is stored with release order after the entry): a fork at
 * any instant, from any thread, sees a consistent table, and readers take
 * no lock. Nothing else here needs the GIL (the module says so to
 * free-threaded CPython, which then keeps it off).
 *
 * It also carries the process mark (django_forksafe.detection): a byte on a
 * MADV_WIPEONFORK page, zeroed by the kernel in every child, read here with
 * one load and no Python arithmetic.
 *
 * It reads that mark on the query path too: query_path_methods() gives the
 * wrapper class its two checks as methods written here, the mark read in C
 * where Python's would cost every query a few bytecodes more; and
 * checked_client() gives a memcached cache object's _cache, read by every
 * operation, as a descriptor written here, for the same reason.
 *
 * The rest is for the registry, called from Python with the GIL held, where
 * C saves a child its first use's page faults: is_database_socket(), the
 * peer check of a new connection (one getpeername(), no allocation), and
 * keep_forever(), the reference that keeps an inherited raw connection
 * from ever being freed.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

#define MAX_ENDPOINTS 256
#define MAX_ADDRESS (sizeof(((struct sockaddr_un *)0)->sun_path))

typedef struct {
    int family;            /* AF_INET (IPv4-mapped IPv6 too), AF_INET6, AF_UNIX */
    int suffix;            /* AF_UNIX: the path ends with `address` */
    unsigned int port;     /* host byte order; AF_INET and AF_INET6 */
    size_t length;         /* bytes of `address` */
    unsigned char address[MAX_ADDRESS];
} Endpoint;

static Endpoint endpoints[MAX_ENDPOINTS];
static size_t endpoint_count;   /* release on write, acquire on read */
/* Held by the one thread writing the table; let go in the child, where the
 * thread that held it at the fork does not exist (its entry was not
 * published, and is written over). */
static unsigned char table_lock;

/* The dead end, made once in the parent; its inode tells the child whether
 * the descriptor number still holds it (a daemonizer may have closed it, and
 * the number may hold something else since). See above for what it is. */
static int dead_fd = -1;
static dev_t dead_dev;
static ino_t dead_ino;

/* What the handler did in this process: valid only where handled_in is
 * this process's pid (a child of a raw clone(), syscall(SYS_fork) or
 * glibc's _Fork() ran no handler, and holds its parent's copy). */
static long silenced_count;
static int scan_failed;

/* post_fork's parent_pid, which Python cannot always know: a child may fork
 * before Python hears of its own fork. This process's pid, kept since the
 * import and by the handler in each child; there, the parent's is what the
 * memory it copied says (getppid() would say 1 once a daemonizing parent
 * has exited), and handled_in tells whether the handler ran in this very
 * process (not after a raw clone(), which copies forked_from as it is).
 * own_pid is read again before each fork (the prepare handler), so that a
 * child of a process made without the handler names that process. */
static pid_t own_pid;
static pid_t forked_from;
static pid_t handled_in;

/* The process mark: 1 in the process that armed it, 0 in any child. Read
 * and written with relaxed atomics (plain moves on x86-64 and arm64): any
 * thread may read it while another arms it. */
static unsigned char *mark_page;
static unsigned char mark_fallback = 1;  /* if MADV_WIPEONFORK is refused */
static int mark_wipes_on_fork;

/* A system call interrupted by a signal handler (EINTR) is made again: an
 * interrupted scan is not a failed one. */
#define RETRIED(result, call) \
    do { \
        (result) = (call); \
    } while ((result) < 0 && errno == EINTR)

/* memcmp() == 0, written out: in a new process, the C library's memcmp()
 * would cost the handler a page fault (its code page is not mapped yet). */
static inline int
same_bytes(const unsigned char *a, const unsigned char *b, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        if (a[i] != b[i]) {
            return 0;
        }
    }
    return 1;
}

static int
is_database_peer(const struct sockaddr_storage *peer, socklen_t length)
{
    int family = peer->ss_family;
    const unsigned char *address;
    size_t address_length;
    unsigned int port = 0;

    if (family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)peer;
        address = (const unsigned char *)&in4->sin_addr;
        address_length = 4;
        port = ntohs(in4->sin_port);
    }
    else if (family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
        address = (const unsigned char *)&in6->sin6_addr;
        address_length = 16;
        port = ntohs(in6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            family = AF_INET;
            address += 12;
            address_length = 4;
        }
    }
    else if (family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)peer;
        if (length <= offsetof(struct sockaddr_un, sun_path)) {
            return 0;  /* Unnamed: a socket pair. */
        }
        address = (const unsigned char *)un->sun_path;
        address_length = length - offsetof(struct sockaddr_un, sun_path);
        if (address[0] != '\0') {  /* A path, not an abstract name: up to its NUL. */
            size_t end = 0;
            while (end < address_length && address[end] != '\0') {
                end++;
            }
            address_length = end;
        }
    }
    else {
        return 0;
    }

    size_t count = __atomic_load_n(&endpoint_count, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < count; i++) {
        const Endpoint *endpoint = &endpoints[i];
        if (endpoint->family != family) {
            continue;
        }
        if (family == AF_UNIX) {
            if (endpoint->suffix) {
                if (address_length >= endpoint->length
                    && same_bytes(address + address_length - endpoint->length,
                                  endpoint->address, endpoint->length)) {
                    return 1;
                }
            }
            else if (endpoint->length == address_length
                     && same_bytes(endpoint->address, address, address_length)) {
                return 1;
            }
        }
        else if (endpoint->port == port && endpoint->length == address_length
                 && same_bytes(endpoint->address, address, address_length)) {
            return 1;
        }
    }
    return 0;
}

/* A new dead end (see above), or -1. */
static int
new_dead_end(void)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        return -1;
    }
    close(pair[1]);
    return pair[0];
}

/* A dead end to put over a database socket: the parent's, if the number still
 * holds it, else one made here. -1 if none can be had (out of descriptors):
 * the socket is then left as it is, and the Python handler keeps the
 * connections over it unused. */
static int
dead_end(int *made_here)
{
    struct stat st;

    if (dead_fd >= 0 && fstat(dead_fd, &st) == 0 && S_ISSOCK(st.st_mode)
        && st.st_dev == dead_dev && st.st_ino == dead_ino) {
        return dead_fd;
    }
    int made = new_dead_end();
    if (made >= 0) {
        *made_here = 1;
    }
    return made;
}

static void
silence_if_database(int fd, int *dead, int *made_here)
{
    struct sockaddr_storage peer;
    socklen_t length = sizeof(peer);

    memset(&peer, 0, sizeof(peer));
    /* One call tells a socket (ENOTSOCK otherwise) and gives its peer. The
     * dead end's peer is unnamed: never a database (and its number may
     * hold a database socket by now, if a daemonizer closed it). */
    if (getpeername(fd, (struct sockaddr *)&peer, &length) != 0) {
        return;  /* Not a socket, or not connected. */
    }
    if (!is_database_peer(&peer, length)) {
        return;
    }
    if (*dead < 0) {
        *dead = dead_end(made_here);
        if (*dead < 0) {
            scan_failed = 1;
            return;
        }
    }
    int flags = fcntl(fd, F_GETFD);
    int put;
    RETRIED(put, dup3(*dead, fd, (flags >= 0 && (flags & FD_CLOEXEC)) ? O_CLOEXEC : 0));
    if (put == fd) {
        silenced_count++;
    }
    else if (errno == EBADF && close(fd) == 0) {
        /* A number at or above RLIMIT_NOFILE (lowered since it was
         * opened): nothing can be put there, nor open there while the limit
         * stays. Closed: the child's copy of the socket goes, which sends
         * nothing while the parent holds its own, and its driver sees EBADF. */
        silenced_count++;
    }
    else {
        scan_failed = 1;
    }
}

/* FDSize in /proc/self/status: the size of the descriptor table, above every
 * open descriptor's number. -1 if it cannot be read. */
static int
descriptor_table_size(void)
{
    char text[1024];
    int status;
    RETRIED(status, open("/proc/self/status", O_RDONLY | O_CLOEXEC));
    if (status < 0) {
        return -1;
    }
    ssize_t length;
    RETRIED(length, read(status, text, sizeof(text) - 1));
    close(status);
    if (length <= 0) {
        return -1;
    }
    text[length] = '\0';
    const char *field = strstr(text, "\nFDSize:");
    if (field == NULL) {
        return -1;
    }
    int size = 0, digits = 0;
    for (const char *c = field + 8; *c == ' ' || *c == '\t' || (*c >= '0' && *c <= '9'); c++) {
        if (*c >= '0' && *c <= '9') {
            if (size > INT_MAX / 10 - 10) {
                return -1;  /* Not a size a descriptor table has. */
            }
            size = size * 10 + (*c - '0');
            digits++;
        }
    }
    return digits > 0 ? size : -1;
}

#define MAX_PROBED_BOUND 8192
#define WORD_BITS (CHAR_BIT * sizeof(unsigned long))

/* Whether `number` is at or beyond the end of the descriptor table: it is
 * not open (fcntl() fails with EBADF), and select() ignores it. Linux's
 * select() looks at no descriptor beyond the table's end, while a closed one
 * inside the table fails it with EBADF: a result of 0 can only mean
 * "beyond". Not poll() to tell "open": it says POLLNVAL for an O_PATH
 * descriptor, which select() before Linux 5.17 then skips and returns 0 for.
 * -1 if a call fails otherwise. */
static int
beyond_descriptor_table(int number, unsigned long *bits)
{
    if (fcntl(number, F_GETFD) >= 0) {
        return 0;  /* Open. */
    }
    if (errno != EBADF) {
        return -1;
    }
    size_t words = (size_t)number / WORD_BITS + 1;
    int ready;
    do {
        /* Anew for each try: an interrupted select() may leave the set
         * changed, and the time too. */
        memset(bits, 0, words * sizeof(unsigned long));
        bits[number / WORD_BITS] = 1UL << (number % WORD_BITS);
        struct timeval now = {0, 0};
        ready = select(number + 1, (fd_set *)bits, NULL, NULL, &now);
    } while (ready < 0 && errno == EINTR);
    if (ready == 0) {
        return 1;
    }
    if (ready < 0 && errno == EBADF) {
        return 0;  /* Closed, inside the table. */
    }
    return -1;
}

/* A number above every open descriptor's: the first of 64, 128, 256, ... up
 * to MAX_PROBED_BOUND beyond the descriptor table's end, found with two
 * system calls per size tried; else the table's size from /proc/self/status
 * (in a new process, that read took 25 to 30 µs: the kernel sets up its
 * /proc entries on first use). -1 if neither can be had. */
static int
descriptor_bound(void)
{
    unsigned long bits[MAX_PROBED_BOUND / WORD_BITS + 1];
    for (int number = 64; number <= MAX_PROBED_BOUND; number *= 2) {
        int beyond = beyond_descriptor_table(number, bits);
        if (beyond < 0) {
            break;
        }
        if (beyond) {
            return number;
        }
    }
    return descriptor_table_size();
}

/* CPython 3.13 and later keep, for each thread waiting on a lock, an entry
 * in a table (the parking lot) that points into that thread's stack. In a
 * child only the forking thread is left: os.fork() empties the table
 * (PyOS_AfterFork_Child calls _PyParkingLot_AfterFork), a fork behind
 * Python's back does not, and the child's first unlock of such a lock hands
 * it to a thread that does not exist (taking it then waits for ever) or
 * wakes a waiter on a stack no thread runs on. The handler does what
 * os.fork() does, for every child: emptying the table is memory writes
 * alone. Found at import (CPython exports it); NULL before 3.13. */
static void (*parking_lot_after_fork)(void);

static void
silence_in_child(void)
{
    int saved_errno = errno;
    int dead = -1, made_here = 0;

    if (parking_lot_after_fork != NULL) {
        parking_lot_after_fork();
    }
    silenced_count = 0;
    scan_failed = 0;
    forked_from = own_pid;
    own_pid = handled_in = getpid();
    __atomic_store_n(&table_lock, 0, __ATOMIC_RELAXED);
    if (__atomic_load_n(&endpoint_count, __ATOMIC_ACQUIRE) == 0) {
        goto done;
    }
    /* Not /proc/self/fd: listing it makes the kernel build an inode for
     * every descriptor of a new process (about 4 us each). A bound on the
     * descriptor numbers, and poll() tells which are open, 256 at a time. */
    int table_size = descriptor_bound();
    if (table_size < 0) {
        scan_failed = 1;  /* The Python handler scans instead. */
        goto done;
    }
    struct pollfd batch[256];
    nfds_t batch_size = sizeof(batch) / sizeof(batch[0]);
    for (int first = 0; first < table_size;) {
        nfds_t count = (nfds_t)(table_size - first);
        if (count > batch_size) {
            count = batch_size;
        }
        for (nfds_t i = 0; i < count; i++) {
            batch[i].fd = first + (int)i;
            batch[i].events = 0;
            batch[i].revents = 0;
        }
        int ready;
        RETRIED(ready, poll(batch, count, 0));
        if (ready < 0) {
            if (errno == EINVAL && batch_size > 1) {
                /* More than RLIMIT_NOFILE at once: a limit lowered below the
                 * open descriptors. Smaller batches, then. */
                batch_size /= 2;
                continue;
            }
            scan_failed = 1;
            break;
        }
        for (nfds_t i = 0; i < count; i++) {
            if (!(batch[i].revents & POLLNVAL)) {
                silence_if_database(batch[i].fd, &dead, &made_here);
            }
        }
        first += (int)count;
    }
    if (made_here) {
        close(dead);
    }
done:
    if (mark_page == NULL) {
        __atomic_store_n(&mark_fallback, 0, __ATOMIC_RELAXED);
    }
    errno = saved_errno;
}

/* In the parent, before each fork(): the pid the child will name as its
 * parent (own_pid may be a grandparent's in a child made without the
 * handler). One getpid(), next to a fork()'s hundreds of microseconds. */
static void
before_fork(void)
{
    __atomic_store_n(&own_pid, getpid(), __ATOMIC_RELAXED);
}

/* ---- Python API ---- */

static PyObject *
add_endpoint(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"family", "address", "port", "suffix", NULL};
    int family, suffix = 0;
    unsigned int port = 0;
    Py_buffer address;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iy*|Ip", keywords,
                                     &family, &address, &port, &suffix)) {
        return NULL;
    }
    int valid = (family == AF_INET && address.len == 4)
        || (family == AF_INET6 && address.len == 16)
        || (family == AF_UNIX && address.len > 0 && (size_t)address.len <= MAX_ADDRESS);
    if (!valid) {
        PyBuffer_Release(&address);
        PyErr_SetString(PyExc_ValueError, "not an IPv4, IPv6 or Unix socket address");
        return NULL;
    }
    Endpoint wanted;
    memset(&wanted, 0, sizeof(wanted));
    wanted.family = family;
    wanted.suffix = family == AF_UNIX && suffix;
    wanted.port = family == AF_UNIX ? 0 : port;
    wanted.length = (size_t)address.len;
    memcpy(wanted.address, address.buf, address.len);
    PyBuffer_Release(&address);

    int added = 1;
    /* No Python inside: the lock is held for a few hundred instructions. */
    while (__atomic_exchange_n(&table_lock, 1, __ATOMIC_ACQUIRE)) {
        sched_yield();
    }
    size_t count = __atomic_load_n(&endpoint_count, __ATOMIC_RELAXED);
    size_t i;
    for (i = 0; i < count; i++) {
        const Endpoint *known = &endpoints[i];
        if (known->family == wanted.family && known->suffix == wanted.suffix
            && known->port == wanted.port && known->length == wanted.length
            && memcmp(known->address, wanted.address, wanted.length) == 0) {
            break;
        }
    }
    if (i == count) {
        if (count == MAX_ENDPOINTS) {
            added = 0;  /* Full: the Python handler scans as well. */
        }
        else {
            endpoints[count] = wanted;
            __atomic_store_n(&endpoint_count, count + 1, __ATOMIC_RELEASE);
        }
    }
    __atomic_store_n(&table_lock, 0, __ATOMIC_RELEASE);
    return PyBool_FromLong(added);
}

/* Whether `fd` is connected to a recorded endpoint: one getpeername(), no
 * allocation, for a new raw connection whose server is already known. */
static PyObject *
is_database_socket(PyObject *Py_UNUSED(module), PyObject *argument)
{
    long number = PyLong_AsLong(argument);
    if (number == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (number < 0 || number > INT_MAX) {
        Py_RETURN_FALSE;
    }
    int fd = (int)number;
    struct sockaddr_storage peer;
    socklen_t length = sizeof(peer);
    memset(&peer, 0, sizeof(peer));
    if (getpeername(fd, (struct sockaddr *)&peer, &length) != 0) {
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(is_database_peer(&peer, length));
}

/* A reference never given back: no deallocator of `obj` runs in this
 * process, not even at interpreter exit (an inherited raw connection). */
static PyObject *
keep_forever(PyObject *Py_UNUSED(module), PyObject *obj)
{
    Py_INCREF(obj);
    Py_RETURN_NONE;
}

/* What the handler did here; (0, False) where it did not run in this very
 * process (a raw clone(), syscall(SYS_fork), _Fork(), or no fork at all):
 * nothing was silenced here, and Python must scan. */
static PyObject *
last_fork(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    int ran_here = handled_in != 0 && handled_in == getpid();
    long silenced = ran_here ? silenced_count : 0;
    return Py_BuildValue("(lO)", silenced, ran_here && !scan_failed ? Py_True : Py_False);
}

static PyObject *
forked_from_pid(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyLong_FromLong(handled_in != 0 && handled_in == getpid() ? (long)forked_from : 0L);
}

/* Python's after-fork-in-child hook, made in C so that a child that needs no
 * Python at the fork touches no Python object (each would cost it a
 * copy-on-write page fault): it calls the registry's handler only when the
 * scan failed here, or the parent said a child must hear of the fork at once. */

static PyObject *python_handler;  /* Atomic: set by any thread. */
static int python_wanted;         /* Atomic, and only ever set. */

static PyObject *
after_fork_in_child(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    if (!__atomic_load_n(&python_wanted, __ATOMIC_RELAXED) && !scan_failed) {
        Py_RETURN_NONE;
    }
    PyObject *handler = __atomic_load_n(&python_handler, __ATOMIC_ACQUIRE);
    if (handler == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallNoArgs(handler);
}

static PyObject *
set_python_handler(PyObject *Py_UNUSED(module), PyObject *handler)
{
    if (!PyCallable_Check(handler)) {
        PyErr_SetString(PyExc_TypeError, "the handler must be callable");
        return NULL;
    }
    /* The one it replaces is never released: another thread may be calling
     * it (set once at import, in practice). */
    __atomic_store_n(&python_handler, Py_NewRef(handler), __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *
want_python_at_fork(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    __atomic_store_n(&python_wanted, 1, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

/* The process mark, as a sequence of one byte: PROCESS_MARK[0]. */

typedef struct {
    PyObject_HEAD
} ProcessMark;

static inline int
mark_armed(void)
{
    return mark_page != NULL ? __atomic_load_n(mark_page, __ATOMIC_RELAXED)
                             : __atomic_load_n(&mark_fallback, __ATOMIC_RELAXED);
}

static PyObject *
mark_getitem(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(index))
{
    /* A bool, not an int: the cheapest for `if not PROCESS_MARK[0]:`
     * (no conversion, and truth at a glance). */
    return Py_NewRef(mark_armed() ? Py_True : Py_False);
}

static int
mark_setitem(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(index), PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "the process mark cannot be deleted");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    __atomic_store_n(mark_page != NULL ? mark_page : &mark_fallback, (unsigned char)truth, __ATOMIC_RELAXED);
    return 0;
}

static PyMappingMethods mark_as_mapping = {
    .mp_subscript = mark_getitem,
    .mp_ass_subscript = mark_setitem,
};

static PyTypeObject ProcessMarkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "django_forksafe._native.ProcessMark",
    .tp_basicsize = sizeof(ProcessMark),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "1 in the process that armed it, 0 in any child: PROCESS_MARK[0].",
    .tp_as_mapping = &mark_as_mapping,
    .tp_new = PyType_GenericNew,
};

/* The query path's two checks, as methods of the wrapper class: where the
 * process mark is read on every query (ensure_connection() at every cursor,
 * validate_no_broken_transaction() at every execute), a check written in
 * Python costs every query a few bytecodes more than Django's own. Here the
 * check is one load, and the rest is Django's body (`if self.connection is
 * None`, `if self.needs_rollback`): the slow paths (a child's invalidation,
 * connecting, raising) are Python's, given by query_path_methods(). */

static PyObject *query_invalidate;  /* registry.invalidate_if_forked */
static PyObject *query_connect;     /* connecting, with self */
static PyObject *query_broken;      /* Django's raise, with self */
static PyObject *name_connection;
static PyObject *name_needs_rollback;

static int
invalidate_if_child(void)
{
    if (mark_armed()) {
        return 0;
    }
    PyObject *result = PyObject_CallNoArgs(__atomic_load_n(&query_invalidate, __ATOMIC_ACQUIRE));
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyObject *
checked_ensure_connection(PyObject *self, PyObject *Py_UNUSED(unused))
{
    if (invalidate_if_child() < 0) {
        return NULL;
    }
    PyObject *connection = PyObject_GetAttr(self, name_connection);
    if (connection == NULL) {
        return NULL;
    }
    int connected = connection != Py_None;
    Py_DECREF(connection);
    if (connected) {
        Py_RETURN_NONE;
    }
    return PyObject_CallOneArg(__atomic_load_n(&query_connect, __ATOMIC_ACQUIRE), self);
}

static PyObject *
checked_validate_no_broken_transaction(PyObject *self, PyObject *Py_UNUSED(unused))
{
    if (invalidate_if_child() < 0) {
        return NULL;
    }
    PyObject *needs_rollback = PyObject_GetAttr(self, name_needs_rollback);
    if (needs_rollback == NULL) {
        return NULL;
    }
    int broken = PyObject_IsTrue(needs_rollback);
    Py_DECREF(needs_rollback);
    if (broken <= 0) {
        return broken < 0 ? NULL : Py_NewRef(Py_None);
    }
    return PyObject_CallOneArg(__atomic_load_n(&query_broken, __ATOMIC_ACQUIRE), self);
}

static PyMethodDef query_path_definitions[] = {
    {"ensure_connection", checked_ensure_connection, METH_NOARGS,
     "The process mark checked (a child invalidates first), then connect if not connected."},
    {"validate_no_broken_transaction", checked_validate_no_broken_transaction, METH_NOARGS,
     "The process mark checked (a child invalidates first), then Django's check."},
};

static PyObject *
query_path_methods(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyTypeObject *type;
    PyObject *invalidate, *connect, *broken;
    if (!PyArg_ParseTuple(args, "O!OOO:query_path_methods", &PyType_Type, &type, &invalidate, &connect, &broken)) {
        return NULL;
    }
    if (!PyCallable_Check(invalidate) || !PyCallable_Check(connect) || !PyCallable_Check(broken)) {
        PyErr_SetString(PyExc_TypeError, "query_path_methods() takes a type and three callables");
        return NULL;
    }
    if (name_connection == NULL) {
        name_connection = PyUnicode_InternFromString("connection");
        name_needs_rollback = PyUnicode_InternFromString("needs_rollback");
        if (name_connection == NULL || name_needs_rollback == NULL) {
            return NULL;
        }
    }
    /* Those they replace are never released: another thread may be in one. */
    __atomic_store_n(&query_invalidate, Py_NewRef(invalidate), __ATOMIC_RELEASE);
    __atomic_store_n(&query_connect, Py_NewRef(connect), __ATOMIC_RELEASE);
    __atomic_store_n(&query_broken, Py_NewRef(broken), __ATOMIC_RELEASE);
    PyObject *ensure = PyDescr_NewMethod(type, &query_path_definitions[0]);
    PyObject *validate = ensure == NULL ? NULL : PyDescr_NewMethod(type, &query_path_definitions[1]);
    if (validate == NULL) {
        Py_XDECREF(ensure);
        return NULL;
    }
    return Py_BuildValue("(NN)", ensure, validate);
}

/* A memcached cache object's client, read by every operation of Django's
 * (`self._cache`): Django's cached_property is, once built, a plain
 * attribute of the object, where a property written in Python costs every
 * get a call. Here the mark is read in one load, then the attribute that
 * holds the client; the slow paths (a child's invalidation, building a
 * client, setting, deleting) are Python's, given to checked_client(). A
 * data descriptor, as the property it replaces. Not tracked by the garbage
 * collector: it lives as long as the class it is set on, and is given
 * module-level functions only (a closure holding a class or an instance
 * would make a cycle the collector cannot see). */

typedef struct {
    PyObject_HEAD
    PyObject *attribute;  /* the instance's attribute holding the client */
    PyObject *invalidate; /* registry.invalidate_if_forked */
    PyObject *build;      /* (self) -> client, when the attribute is missing */
    PyObject *setter;     /* (self, client) */
    PyObject *deleter;    /* (self) */
} CheckedClient;

static void
checked_client_dealloc(CheckedClient *self)
{
    Py_XDECREF(self->attribute);
    Py_XDECREF(self->invalidate);
    Py_XDECREF(self->build);
    Py_XDECREF(self->setter);
    Py_XDECREF(self->deleter);
    PyObject_Free(self);
}

static PyObject *
checked_client_get(PyObject *descriptor, PyObject *instance, PyObject *Py_UNUSED(owner))
{
    CheckedClient *self = (CheckedClient *)descriptor;
    if (instance == NULL) {
        return Py_NewRef(descriptor);
    }
    if (!mark_armed()) {
        PyObject *result = PyObject_CallNoArgs(self->invalidate);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
    }
    PyObject *client = PyObject_GetAttr(instance, self->attribute);
    if (client != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return client;
    }
    PyErr_Clear();
    return PyObject_CallOneArg(self->build, instance);
}

static int
checked_client_set(PyObject *descriptor, PyObject *instance, PyObject *value)
{
    CheckedClient *self = (CheckedClient *)descriptor;
    PyObject *result = value == NULL ? PyObject_CallOneArg(self->deleter, instance)
                                     : PyObject_CallFunctionObjArgs(self->setter, instance, value, NULL);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyTypeObject CheckedClientType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "django_forksafe._native.CheckedClient",
    .tp_basicsize = sizeof(CheckedClient),
    .tp_dealloc = (destructor)checked_client_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A cache object's client, the process mark read first (see checked_client()).",
    .tp_descr_get = checked_client_get,
    .tp_descr_set = checked_client_set,
};

static PyObject *
checked_client(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *attribute, *invalidate, *build, *setter, *deleter;
    if (!PyArg_ParseTuple(args, "UOOOO:checked_client", &attribute, &invalidate, &build, &setter, &deleter)) {
        return NULL;
    }
    if (!PyCallable_Check(invalidate) || !PyCallable_Check(build) || !PyCallable_Check(setter)
        || !PyCallable_Check(deleter)) {
        PyErr_SetString(PyExc_TypeError, "checked_client() takes an attribute name and four callables");
        return NULL;
    }
    CheckedClient *self = PyObject_New(CheckedClient, &CheckedClientType);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(attribute);
    PyUnicode_InternInPlace(&attribute);
    self->attribute = attribute;
    self->invalidate = Py_NewRef(invalidate);
    self->build = Py_NewRef(build);
    self->setter = Py_NewRef(setter);
    self->deleter = Py_NewRef(deleter);
    return (PyObject *)self;
}

static PyMethodDef methods[] = {
    {"add_endpoint", (PyCFunction)(void (*)(void))add_endpoint, METH_VARARGS | METH_KEYWORDS,
     "add_endpoint(family, address, port=0, suffix=False) -> bool\n\n"
     "Record a database endpoint: 4 or 16 address bytes and a port, or a Unix\n"
     "socket's name (its end, with suffix). False if the table is full."},
    {"is_database_socket", is_database_socket, METH_O,
     "is_database_socket(fd) -> bool\n\n"
     "Whether the descriptor is a socket connected to a recorded endpoint."},
    {"keep_forever", keep_forever, METH_O,
     "keep_forever(obj) -> None\n\n"
     "Take a reference that is never released: obj is never freed here."},
    {"last_fork", last_fork, METH_NOARGS,
     "last_fork() -> (silenced, complete)\n\n"
     "What the fork handler did in this process: how many sockets it silenced,\n"
     "and whether it could look at every descriptor. (0, False) where it did not\n"
     "run in this very process (no fork, or a raw clone(), syscall(SYS_fork),\n"
     "_Fork()): nothing here was silenced by it."},
    {"forked_from", forked_from_pid, METH_NOARGS,
     "forked_from() -> int\n\n"
     "The process this one forked from, as the fork handler saw it (0 if the\n"
     "handler did not run in this process)."},
    {"after_fork_in_child", after_fork_in_child, METH_NOARGS,
     "after_fork_in_child() -> None\n\n"
     "For os.register_at_fork(after_in_child=...): calls the handler given to\n"
     "set_python_handler() only if the scan failed in this child, or\n"
     "want_python_at_fork() was called (in this process or a parent)."},
    {"set_python_handler", set_python_handler, METH_O,
     "set_python_handler(handler) -> None\n\n"
     "What after_fork_in_child() calls when Python is wanted at the fork."},
    {"want_python_at_fork", want_python_at_fork, METH_NOARGS,
     "want_python_at_fork() -> None\n\n"
     "From now on, every child runs the Python handler at the fork."},
    {"query_path_methods", query_path_methods, METH_VARARGS,
     "query_path_methods(type, invalidate, connect, broken) -> (ensure_connection, validate_no_broken_transaction)\n\n"
     "The query path's checks, as methods of `type` (see _native.c): each reads the\n"
     "process mark, calls invalidate() in a child, then does Django's body, calling\n"
     "connect(self) if not connected, broken(self) if a rollback is needed."},
    {"checked_client", checked_client, METH_VARARGS,
     "checked_client(attribute, invalidate, build, setter, deleter) -> descriptor\n\n"
     "A data descriptor for a cache object's client (see _native.c): reading it\n"
     "reads the process mark, calls invalidate() in a child, then returns the\n"
     "instance's `attribute`, or build(self) where it has none; assigning calls\n"
     "setter(self, client), deleting deleter(self)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "django_forksafe._native",
    .m_doc = "Inherited database sockets silenced inside fork() (see _native.c).",
    .m_size = -1,
    .m_methods = methods,
};

static int initialized;

PyMODINIT_FUNC
PyInit__native(void)
{
    if (PyType_Ready(&ProcessMarkType) < 0 || PyType_Ready(&CheckedClientType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL) {
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* True of every function here (see the top of this file): without it,
     * free-threaded CPython would turn the GIL on at import, with a
     * RuntimeWarning (an ImportError under -W error). */
    if (PyUnstable_Module_SetGIL(module, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
#endif
    if (!initialized) {
        /* Once per process, even if the module is loaded again. */
        own_pid = getpid();
        long page_size = sysconf(_SC_PAGESIZE);
        void *page = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page != MAP_FAILED) {
            if (madvise(page, page_size, MADV_WIPEONFORK) == 0) {
                mark_page = page;
                *mark_page = 1;
                mark_wipes_on_fork = 1;
            }
            else {
                munmap(page, page_size);
            }
        }
        struct stat st;
        int made = new_dead_end();
        if (made >= 0) {
            if (fstat(made, &st) == 0) {
                dead_fd = made;
                dead_dev = st.st_dev;
                dead_ino = st.st_ino;
            }
            else {
                close(made);
            }
        }
#if PY_VERSION_HEX >= 0x030D0000
        *(void **)(&parking_lot_after_fork) = dlsym(RTLD_DEFAULT, "_PyParkingLot_AfterFork");
#endif
        int error = pthread_atfork(before_fork, NULL, silence_in_child);
        if (error != 0) {
            Py_DECREF(module);
            errno = error;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        initialized = 1;
    }
    ProcessMark *mark = PyObject_New(ProcessMark, &ProcessMarkType);
    if (mark == NULL || PyModule_AddObject(module, "PROCESS_MARK", (PyObject *)mark) < 0) {
        Py_XDECREF(mark);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MARK_WIPES_ON_FORK", mark_wipes_on_fork) < 0
        || PyModule_AddIntConstant(module, "MAX_ENDPOINTS", MAX_ENDPOINTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
