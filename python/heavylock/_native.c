/*
 * _native.c - the Python face of libheavylock.
 *
 * After CPython's Modules/fcntlmodule.c: every blocking call runs with the
 * GIL released and loops on EINTR while PyErr_CheckSignals() lets Ctrl-C
 * through; errors raise OSError with errno and the path; multi-phase init.
 *
 * Built on the limited API (abi3, CPython >= 3.10): one wheel serves every
 * later CPython.  Hence heap types only, PyType_GetSlot instead of type
 * fields, and the function forms of the bytes/str accessors.
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <time.h>
#endif

#include "heavylock.h"

/*
 * Threads.  A Lock handle is one hold of the lock (one open file
 * description), not one per thread, so a thread may release what another
 * acquired.  What a handle cannot do is serve two calls at once: the C
 * handle keeps the descriptor and the waiting thread in its fields, and the
 * GIL is released around the wait.  A second acquire() would overwrite them
 * (and its failure path close the descriptor the first thread waits on), a
 * close() would free memory the waiter still uses.  So each handle has a
 * mutex, taken by every method that touches the C handle and held across the
 * wait; a call that finds it taken fails AT ONCE with RuntimeError rather
 * than queueing behind a wait that may never end.  Only acquire() releases
 * the GIL while holding the mutex, so "taken" always means "another thread
 * is waiting in acquire() on this handle".  Threads that want to queue for
 * the lock open a handle each.
 */
typedef struct {
  PyObject_HEAD
  hl_lock_t *lock;
  PyThread_type_lock mutex;
} LockObject;

/* Exception classes defined in Python (heavylock.backends: SelfDeadlock,
 * LockLost), looked up when raised: the extension is imported by that very
 * module, so it cannot import it at load time.  NULL (and no error) when it
 * cannot be had: the caller falls back to OSError. */
static PyObject *py_exception(const char *name) {
  PyObject *mod = PyImport_ImportModule("heavylock.backends");
  if (mod == NULL) {
    PyErr_Clear();
    return NULL;
  }
  PyObject *cls = PyObject_GetAttrString(mod, name);
  Py_DECREF(mod);
  if (cls == NULL || !PyType_Check(cls) ||
      !PyObject_IsSubclass(cls, PyExc_OSError)) {
    PyErr_Clear();
    Py_XDECREF(cls);
    return NULL;
  }
  return cls;
}

/* Text as it may be shown: every password masked by the library's one
 * redaction (hl_redact), so that an exception, its pickle or a log never
 * carries one. */
static PyObject *redacted(const char *text) {
  size_t n = strlen(text) * 2 + 4; /* "***" for each password of 1 byte or more */
  char *buf = PyMem_Malloc(n);
  if (buf == NULL)
    return PyErr_NoMemory();
  PyObject *r = PyUnicode_DecodeFSDefault(hl_redact(text, buf, n));
  PyMem_Free(buf);
  return r;
}

static PyObject *shown_target(const char *path) { return redacted(path); }

/* The one place where a library result becomes a Python exception.  The
 * header's contract: a result is 0 or more, one of the HL_E* codes, or
 * -errno.  `detail`, when given, replaces the generic message; what the
 * library knows beyond the code (hl_error_detail(): a server's words) is
 * appended. */
static PyObject *raise_hl(int rc, const char *path, const char *detail) {
  /* Only the remote kind sets a detail, and the library never clears it: a
   * detail read after a failure on a lock file would be an old server's. */
  const char *more = path && strstr(path, "://") ? hl_error_detail() : "";
  if (rc == HL_ENOBUDGET) { /* the library's words name the CLI's option */
    detail = "memory admission on a remote lock needs a static budget: open_lock(..., "
             "budget=BYTES) or Lock.set_budget(BYTES); no live memory can be read across "
             "machines";
    more = "";
  }
  /* libpq's messages span lines ("...failed: Connection refused\n\tIs the
   * server running..."): one line each, for logs and terminals. */
  char line[8192]; /* kind.c's detail fits (HL__DETAIL_MAX) */
  size_t n = 0;
  for (const char *c = more ? more : ""; *c && n < sizeof(line) - 1; c++)
    if ((unsigned char)*c >= 0x20 && *c != 0x7f)
      line[n++] = *c;
    else if (n > 0 && line[n - 1] != ' ')
      line[n++] = ' ';
  while (n > 0 && line[n - 1] == ' ')
    n--;
  line[n] = '\0';
  PyObject *msgobj = PyUnicode_FromFormat("%s%s", detail ? detail : hl_strerror(rc),
                                          n ? ": " : "");
  if (msgobj != NULL && n) {
    PyObject *tail = PyUnicode_DecodeUTF8(line, (Py_ssize_t)n, "replace");
    PyObject *joined = tail ? PyUnicode_Concat(msgobj, tail) : NULL;
    Py_XDECREF(tail);
    Py_DECREF(msgobj);
    msgobj = joined;
  }
  if (msgobj == NULL)
    return NULL;
  PyObject *target = path ? shown_target(path) : Py_NewRef(Py_None);
  if (target == NULL) {
    Py_DECREF(msgobj);
    return NULL;
  }
  { /* the message may quote a URL (the detail, a bad variable's value) */
    PyObject *bytes = PyUnicode_AsUTF8String(msgobj);
    PyObject *clean = bytes ? redacted(PyBytes_AsString(bytes)) : NULL;
    Py_XDECREF(bytes);
    Py_DECREF(msgobj);
    if ((msgobj = clean) == NULL) {
      Py_DECREF(target);
      return NULL;
    }
  }
  PyObject *cls = NULL; /* an OSError subclass of ours, else OSError picks */
  PyObject *plain = NULL; /* an exception that is not an OSError */
  int err = 0;
  switch (rc) {
  case HL_EENV:
  case HL_ENOBUDGET:
    plain = PyExc_ValueError;
    break;
  case HL_EFORMAT:
    PyErr_Format(PyExc_ValueError, "%U: %U", target, msgobj);
    goto done;
  case HL_ENOTHELD:
    PyErr_SetString(PyExc_RuntimeError, "the lock is not held by this handle");
    goto done;
  case HL_EFORKED:
    PyErr_SetString(PyExc_RuntimeError,
                    "the handle belongs to the parent process: a forked child never "
                    "takes or releases its parent's lock");
    goto done;
  case HL_ESELF:
  case -EDEADLK: err = EDEADLK; cls = py_exception("SelfDeadlock"); break;
  case HL_ELOST: err = ENOLCK; cls = py_exception("LockLost"); break;
  case HL_EBUSY: err = EAGAIN; break;            /* BlockingIOError  */
  case HL_ETIMEDOUT: err = ETIMEDOUT; break;     /* TimeoutError     */
  case HL_EFULL: err = ENOSPC; break;            /* "slot table full" */
  case HL_ESYMLINK: err = ELOOP; break;
  case HL_ENOTREG: err = EINVAL; break;
  default: err = rc < 0 ? -rc : EIO; break;      /* -errno */
  }
  if (plain != NULL) {
    PyErr_SetObject(plain, msgobj);
    goto done;
  }
  /* OSError(errno, ...) picks the subclass (FileNotFoundError, ...). */
  PyObject *exc = PyObject_CallFunction(cls ? cls : PyExc_OSError, "iOO", err, msgobj, target);
  if (exc) {
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
  }
done:
  Py_XDECREF(cls);
  Py_DECREF(msgobj);
  Py_DECREF(target);
  return NULL;
}

static double monotonic(void) {
#ifdef _WIN32
  return (double)GetTickCount64() / 1e3;
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
#endif
}

/* A path argument (str, bytes or os.PathLike) as a bytes object; NULL with
 * an exception set.  The caller owns the reference. */
static PyObject *path_bytes(PyObject *arg) {
  PyObject *b = NULL;
  if (!PyUnicode_FSConverter(arg, &b))
    return NULL;
  return b;
}

/* ---- the per-handle mutex (see "Threads" above) ---- */

/* Take the handle's mutex without waiting: 0, or -1 with RuntimeError. */
static int handle_take(LockObject *self) {
  if (self->mutex != NULL && PyThread_acquire_lock(self->mutex, NOWAIT_LOCK))
    return 0;
  PyErr_SetString(PyExc_RuntimeError,
                  self->mutex == NULL
                      ? "Lock was not initialised"
                      : "this Lock handle is in use by another thread waiting in acquire(); "
                        "a handle serves one call at a time: open one Lock per thread");
  return -1;
}

/* Take the handle for one call: 0, or -1 with RuntimeError (another thread
 * is waiting on it) or ValueError (closed). */
static int handle_enter(LockObject *self) {
  if (handle_take(self) < 0)
    return -1;
  if (self->lock == NULL) {
    PyThread_release_lock(self->mutex);
    PyErr_SetString(PyExc_ValueError, "lock is closed");
    return -1;
  }
  return 0;
}

static void handle_leave(LockObject *self) { PyThread_release_lock(self->mutex); }

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  (void)args;
  (void)kw;
  allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
  LockObject *self = (LockObject *)alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->lock = NULL;
  self->mutex = PyThread_allocate_lock();
  if (self->mutex == NULL) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  return (PyObject *)self;
}

static int Lock_init(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"path", NULL};
  PyObject *pathobj;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, PyUnicode_FSConverter, &pathobj))
    return -1;
  if (handle_take(self) < 0) {
    Py_DECREF(pathobj);
    return -1;
  }
  const char *path = PyBytes_AsString(pathobj);
  hl_lock_close(self->lock); /* __init__ called again: drop the old handle */
  self->lock = NULL;
  int rc = hl_lock_open(&self->lock, path);
  PyThread_release_lock(self->mutex);
  if (rc < 0)
    raise_hl(rc, path, NULL);
  Py_DECREF(pathobj);
  return rc < 0 ? -1 : 0;
}

static void Lock_dealloc(LockObject *self) {
  /* No thread is inside a method: each call holds a reference. */
  PyTypeObject *tp = Py_TYPE(self);
  hl_lock_close(self->lock);
  if (self->mutex)
    PyThread_free_lock(self->mutex);
  freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
  tp_free(self);
  Py_DECREF(tp);
}

PyDoc_STRVAR(acquire_doc,
"acquire(timeout=None, *, on_wait=None, first=1.0, every=15.0) -> bool\n\n"
"Take the lock. timeout None or negative waits as long as it takes, 0 tries\n"
"once, >0 waits that many seconds (inf: forever). Returns False when it is\n"
"busy or the time ran out.\n\n"
"on_wait(status, waited) is called while waiting, first after `first`\n"
"seconds, then every `every` seconds (<= 0: once), with the lock's status()\n"
"and the seconds waited; if it returns true the wait ends (False, nothing\n"
"held); if it raises, the wait ends and the exception propagates.\n\n"
"Raises SelfDeadlock (OSError EDEADLK) when waiting would never end: this\n"
"handle already holds the lock, or this process (or its parent) holds it\n"
"through another descriptor; LockLost when a remote lock's session ended\n"
"while waiting; RuntimeError when another thread is waiting on this handle;\n"
"OSError for anything else.");

/* Signals.  A signal only interrupts the core's wait when it lands inside
 * a blocking system call of this thread (-EINTR).  One that lands between
 * two of them, or that the kernel hands to another thread (pytest with a
 * watchdog thread, -n workers' execnet threads), is noticed by nobody: the
 * wait would go on to its deadline.  So every wait with a deadline or an
 * on_wait runs the core's wait callback at least every SIGNAL_CHECK seconds,
 * and the callback runs PyErr_CheckSignals() with the GIL taken.  (Before,
 * the wait was cut into slices of hl_lock_acquire calls; each slice left
 * the queue and took a new ticket, so a Python waiter lost its turn every
 * half second.)  A wait without deadline or on_wait blocks in flock(2), as
 * CPython's fcntl.flock does, and sees Ctrl-C through EINTR. */
#define SIGNAL_CHECK 0.5

/* Sentinels a wait callback returns to end the wait (outside errno's and the
 * HL_E* ranges). */
#define STOP_ASKED (-40001)  /* on_wait returned true */
#define STOP_RAISED (-40002) /* on_wait or a signal handler raised: saved */

static PyObject *status_dict(const hl_status_t *st);

typedef struct {
  PyObject *on_wait;         /* borrowed; NULL: only signal checks          */
  double start;              /* monotonic time the wait began                */
  double due;                /* seconds waited when on_wait is next called   */
  double every;
  PyObject *et, *ev, *etb;   /* what was raised, kept across the GIL release */
} wait_ctx;

/* The core's wait callback: runs in the waiting thread with the GIL
 * released; takes it for the signal check and the on_wait call. */
static int wait_cb(void *arg, const hl_status_t *st, double waited_now) {
  (void)waited_now; /* a restart after EINTR resets the core's count */
  wait_ctx *w = arg;
  PyGILState_STATE g = PyGILState_Ensure();
  int rc = 0;
  double waited = monotonic() - w->start;
  if (PyErr_CheckSignals() < 0) {
    rc = STOP_RAISED;
  } else if (w->on_wait != NULL && waited >= w->due) {
    w->due = w->every > 0 ? waited + w->every : INFINITY;
    PyObject *d = status_dict(st);
    PyObject *r = d ? PyObject_CallFunction(w->on_wait, "Od", d, waited) : NULL;
    Py_XDECREF(d);
    int stop = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    rc = stop < 0 ? STOP_RAISED : stop ? STOP_ASKED : 0;
  }
  if (rc == STOP_RAISED)
    PyErr_Fetch(&w->et, &w->ev, &w->etb);
  PyGILState_Release(g);
  return rc;
}

/* Acquire with the GIL released, looping on EINTR; 1 got it, 0 busy, timed
 * out or stopped by on_wait, -1 with an exception set.  The caller holds
 * the handle. */
static int do_acquire(LockObject *self, double timeout, PyObject *on_wait, double first,
                      double every) {
  if (hl_lock_held(self->lock)) {
    raise_hl(-EDEADLK, hl_lock_path(self->lock), "this handle already holds the lock");
    return -1;
  }
  if (isinf(timeout))
    timeout = -1; /* inf: forever (a deadline that far overflows the core's ints) */
  wait_ctx w = {on_wait, monotonic(), first > 0 ? first : 0, every, NULL, NULL, NULL};
  int callback = on_wait != NULL || timeout > 0;
  if (callback) {
    /* The core calls back at the finer of on_wait's cadence and the
     * signal check's; wait_cb calls on_wait only when it is due. */
    double check = on_wait != NULL && w.due < SIGNAL_CHECK ? w.due : SIGNAL_CHECK;
    double cadence = on_wait != NULL && every > 0 && every < SIGNAL_CHECK ? every : SIGNAL_CHECK;
    hl_lock_set_wait_callback(self->lock, wait_cb, &w, check, cadence);
  }
  double deadline = w.start + (timeout > 0 ? timeout : 0);
  int rc;
  for (int tried = 0;; tried = 1) {
    double left = timeout;
    /* the first try gets the whole timeout: acquire(1e-9) on a free lock
     * timed out before it had tried */
    if (tried && timeout > 0 && (left = deadline - monotonic()) <= 0) {
      rc = HL_ETIMEDOUT;
      break;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = hl_lock_acquire(self->lock, left);
    Py_END_ALLOW_THREADS
    if (rc != -EINTR)
      break;
    if (PyErr_CheckSignals() < 0)
      break;
  }
  if (callback)
    hl_lock_set_wait_callback(self->lock, NULL, NULL, 0, 0);
  if (w.et != NULL) {
    PyErr_Restore(w.et, w.ev, w.etb);
    return -1;
  }
  if (rc == -EINTR) /* a signal handler raised */
    return -1;
  if (rc == 0)
    return 1;
  if (rc == HL_EBUSY || rc == HL_ETIMEDOUT || rc == STOP_ASKED)
    return 0;
  raise_hl(rc, hl_lock_path(self->lock), NULL);
  return -1;
}

static PyObject *Lock_acquire(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"timeout", "on_wait", "first", "every", NULL};
  PyObject *tobj = Py_None, *on_wait = Py_None;
  double first = 1.0, every = 15.0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O$Odd", kwlist, &tobj, &on_wait, &first, &every))
    return NULL;
  double timeout = -1;
  if (tobj != Py_None) {
    timeout = PyFloat_AsDouble(tobj);
    if (timeout == -1 && PyErr_Occurred())
      return NULL;
    if (timeout != timeout) {
      PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
      return NULL;
    }
  }
  if (first != first || every != every) {
    PyErr_SetString(PyExc_ValueError, "first and every must not be NaN");
    return NULL;
  }
  if (on_wait != Py_None && !PyCallable_Check(on_wait)) {
    PyErr_Format(PyExc_TypeError, "on_wait must be callable, not %R", on_wait);
    return NULL;
  }
  if (handle_enter(self) < 0)
    return NULL;
  int r = do_acquire(self, timeout, on_wait == Py_None ? NULL : on_wait, first, every);
  handle_leave(self);
  return r < 0 ? NULL : PyBool_FromLong(r);
}

/* Release if `only_if_held` is 0 or the handle holds the lock. */
static PyObject *release(LockObject *self, int only_if_held) {
  if (handle_enter(self) < 0)
    return NULL;
  int rc = 0;
  if (!only_if_held || hl_lock_held(self->lock))
    rc = hl_lock_release(self->lock);
  if (rc < 0)
    raise_hl(rc, hl_lock_path(self->lock), NULL);
  handle_leave(self);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Lock_release(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  return release(self, 0);
}

static PyObject *Lock_close(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (self->lock == NULL)
    Py_RETURN_NONE; /* closing twice is fine */
  if (handle_enter(self) < 0)
    return NULL;
  hl_lock_close(self->lock);
  self->lock = NULL;
  handle_leave(self);
  Py_RETURN_NONE;
}

static PyObject *Lock_set_label(LockObject *self, PyObject *arg) {
  const char *label = NULL;
  Py_ssize_t n = 0;
  if (arg != Py_None) {
    if ((label = PyUnicode_AsUTF8AndSize(arg, &n)) == NULL)
      return NULL;
    if ((size_t)n != strlen(label)) {
      PyErr_SetString(PyExc_ValueError, "label contains a NUL character");
      return NULL;
    }
  }
  if (handle_enter(self) < 0)
    return NULL;
  hl_lock_set_label(self->lock, label);
  handle_leave(self);
  Py_RETURN_NONE;
}

/* A byte count argument: a non-negative int, else ValueError naming it. */
static int bytes_arg(PyObject *arg, const char *what, uint64_t *out) {
  if (!PyLong_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "%s must be an int (bytes), not %R", what, arg);
    return -1;
  }
  unsigned long long v = PyLong_AsUnsignedLongLong(arg);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s must be a byte count from 0 to 2**64-1, not %R", what,
                 arg);
    return -1;
  }
  *out = v;
  return 0;
}

/* A setter's result: None, or the exception (EBUSY: "while held"). */
static PyObject *setter_result(LockObject *self, int rc, const char *what) {
  if (rc == -EBUSY) {
    PyErr_Format(PyExc_RuntimeError, "%s cannot change while the lock is held", what);
    return NULL;
  }
  if (rc < 0)
    return raise_hl(rc, hl_lock_path(self->lock), NULL);
  Py_RETURN_NONE;
}

static PyObject *Lock_set_slots(LockObject *self, PyObject *arg) {
  int overflow = 0;
  long n = PyLong_Check(arg) ? PyLong_AsLongAndOverflow(arg, &overflow) : -2;
  if (n == -1 && PyErr_Occurred())
    return NULL;
  if (!PyLong_Check(arg) || overflow || n < 0 || n > 1000000) {
    PyErr_Format(PyExc_ValueError,
                 "slots must be an int: 1 exclusive, n > 1 that many holders, 0 by memory; "
                 "not %R", arg);
    return NULL;
  }
  if (handle_enter(self) < 0)
    return NULL;
  int rc = hl_lock_set_slots(self->lock, (int)n);
  PyObject *r = setter_result(self, rc, "slots");
  handle_leave(self);
  return r;
}

static PyObject *Lock_set_weight(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"nbytes", "source", NULL};
  PyObject *nobj;
  const char *source = "declared";
  Py_ssize_t n = 8;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|s#", kwlist, &nobj, &source, &n))
    return NULL;
  uint64_t bytes;
  if (bytes_arg(nobj, "weight", &bytes) < 0)
    return NULL;
  if ((size_t)n != strlen(source) || n >= HL_SOURCE_MAX) {
    PyErr_Format(PyExc_ValueError, "weight source must be a short word such as 'declared', "
                 "'measured' or 'estimated' (at most %d bytes, no NUL), not '%.40s'",
                 HL_SOURCE_MAX - 1, source);
    return NULL;
  }
  if (handle_enter(self) < 0)
    return NULL;
  int rc = hl_lock_set_weight(self->lock, bytes, source);
  PyObject *r = setter_result(self, rc, "the weight");
  handle_leave(self);
  return r;
}

static PyObject *Lock_set_budget(LockObject *self, PyObject *arg) {
  uint64_t bytes;
  if (bytes_arg(arg, "budget", &bytes) < 0)
    return NULL;
  if (handle_enter(self) < 0)
    return NULL;
  int rc = hl_lock_set_budget(self->lock, bytes);
  PyObject *r = setter_result(self, rc, "the budget");
  handle_leave(self);
  return r;
}

static PyObject *Lock_check(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (handle_enter(self) < 0)
    return NULL;
  int rc = hl_lock_check(self->lock);
  if (rc < 0)
    raise_hl(rc, hl_lock_path(self->lock), NULL);
  handle_leave(self);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Lock_enter(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (handle_enter(self) < 0)
    return NULL;
  int r = do_acquire(self, -1, NULL, 0, 0);
  handle_leave(self);
  return r < 0 ? NULL : Py_NewRef((PyObject *)self);
}

static PyObject *Lock_exit(LockObject *self, PyObject *args) {
  (void)args;
  if (self->lock == NULL)
    Py_RETURN_FALSE; /* closed inside the with block: nothing is held */
  PyObject *r = release(self, 1);
  if (r == NULL)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_FALSE;
}

static PyObject *Lock_get_held(LockObject *self, void *c) {
  (void)c;
  /* A handle another thread is still waiting on does not hold the lock yet
   * as far as Python can tell: that acquire() has not returned. */
  if (self->mutex == NULL || self->lock == NULL ||
      !PyThread_acquire_lock(self->mutex, NOWAIT_LOCK))
    Py_RETURN_FALSE;
  int held = self->lock != NULL && hl_lock_held(self->lock);
  handle_leave(self);
  return PyBool_FromLong(held);
}

static PyObject *Lock_get_path(LockObject *self, void *c) {
  (void)c;
  /* The path never changes while the handle is open, and close() cannot
   * run while another thread waits: no need for the mutex. */
  if (self->lock == NULL) {
    PyErr_SetString(PyExc_ValueError, "lock is closed");
    return NULL;
  }
  return PyUnicode_DecodeFSDefault(hl_lock_path(self->lock));
}

static PyObject *Lock_get_kind(LockObject *self, void *c) {
  (void)c;
  if (handle_enter(self) < 0)
    return NULL;
  PyObject *r = PyUnicode_FromString(hl_lock_kind(self->lock));
  handle_leave(self);
  return r;
}

static PyObject *Lock_get_flags(LockObject *self, void *c) {
  (void)c;
  if (handle_enter(self) < 0)
    return NULL;
  int f = hl_lock_flags(self->lock);
  handle_leave(self);
  return PyLong_FromLong(f);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     acquire_doc},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "Release the lock."},
    {"close", (PyCFunction)Lock_close, METH_NOARGS,
     "Release if held and free the handle. RuntimeError while another thread waits on it."},
    {"set_label", (PyCFunction)Lock_set_label, METH_O,
     "Label for the holder record (rewritten at once when held)."},
    {"set_slots", (PyCFunction)Lock_set_slots, METH_O,
     "set_slots(n): 1 exclusive (default), n > 1 that many holders at once, 0 as many as "
     "memory allows. Only while not held."},
    {"set_weight", (PyCFunction)(void (*)(void))Lock_set_weight, METH_VARARGS | METH_KEYWORDS,
     "set_weight(nbytes, source='declared'): expected peak memory (0 unknown: exclusive) "
     "and where the number came from. Only while not held."},
    {"set_budget", (PyCFunction)Lock_set_budget, METH_O,
     "set_budget(nbytes): static budget for all holders; 0 = live memory. Only while not "
     "held."},
    {"check", (PyCFunction)Lock_check, METH_NOARGS,
     "check(): None while the lock is still held; LockLost when a remote lock's session "
     "ended; RuntimeError when not held. Never waits."},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Lock_getset[] = {
    {"held", (getter)Lock_get_held, NULL, "True while this handle holds the lock.", NULL},
    {"path", (getter)Lock_get_path, NULL, "The lock file's path, or the lock server's URL.",
     NULL},
    {"kind", (getter)Lock_get_kind, NULL, "The kind serving the handle: 'flock', 'slots', 'pg'.",
     NULL},
    {"flags", (getter)Lock_get_flags, NULL,
     "What happened to the current or last hold: FLAG_OTHER_CONTENT | FLAG_LOST.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot Lock_slots[] = {
    {Py_tp_doc, "Lock(path): crash-safe cross-process lock: flock(2) on the file `path`, or a "
                "PostgreSQL advisory lock when `path` is a postgresql:// URL."},
    {Py_tp_new, Lock_new},
    {Py_tp_init, Lock_init},
    {Py_tp_dealloc, Lock_dealloc},
    {Py_tp_methods, Lock_methods},
    {Py_tp_getset, Lock_getset},
    {0, NULL}};

static PyType_Spec Lock_spec = {"heavylock._native.Lock", sizeof(LockObject), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, Lock_slots};

/* ---- module functions ---- */

/* Text from a status or record field as str, never raising: the core keeps
 * them valid UTF-8, and anything else would become U+FFFD, not an error. */
static PyObject *text(const char *s) {
  return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strnlen(s, 4096), "replace");
}

/* A dict from alternating keys and new references (NULL: fail, and the
 * remaining values are still released). */
static PyObject *dict_of(int n, ...) {
  va_list ap;
  va_start(ap, n);
  PyObject *d = PyDict_New();
  for (int i = 0; i < n; i++) {
    const char *k = va_arg(ap, const char *);
    PyObject *v = va_arg(ap, PyObject *);
    if (d != NULL && (v == NULL || PyDict_SetItemString(d, k, v) < 0))
      Py_CLEAR(d);
    Py_XDECREF(v);
  }
  va_end(ap);
  return d;
}

#define U64(x) PyLong_FromUnsignedLongLong((unsigned long long)(x))
#define BOOL(x) PyBool_FromLong((x) != 0)

static PyObject *record_dict(const hl_record_t *r) {
  return dict_of(7, "pid", PyLong_FromLong(r->pid), "start", U64(r->start), "acquired",
                 PyFloat_FromDouble(r->acquired), "host", text(r->host), "boot_id",
                 text(r->boot_id), "label", text(r->label), "cmd", text(r->cmd));
}

static const char *waiter_how(char how) {
  switch (how) {
  case 'b': return "flock"; /* blocked in flock(2) or queued in the server */
  case 'w': return "watch"; /* a timed wait watching the file              */
  case 'q': return "queue"; /* in the slots table (or LISTENing) only       */
  default: return "unknown";
  }
}

/* Append each item to `list` (new references); -1 on failure. */
static int append(PyObject *list, PyObject *item) {
  int rc = item ? PyList_Append(list, item) : -1;
  Py_XDECREF(item);
  return rc;
}

/* The Python form of an hl_status_t (status() and on_wait's argument). */
static PyObject *status_dict(const hl_status_t *st) {
  PyObject *waiters = PyList_New(0), *holders = PyList_New(0);
  if (waiters == NULL || holders == NULL)
    goto fail;
  for (int i = 0; i < st->nwaiters && i < HL_MAX_WAITERS; i++) {
    const hl_waiter_t *w = &st->waiters[i];
    if (append(waiters, dict_of(7, "pid", PyLong_FromLong(w->pid), "how",
                                PyUnicode_FromString(waiter_how(w->how)), "exclusive",
                                BOOL(w->exclusive), "weight", U64(w->weight), "weight_source",
                                text(w->weight_source), "ticket", U64(w->ticket), "label",
                                text(w->label))) < 0)
      goto fail;
  }
  for (int i = 0; i < st->nholders && i < HL_MAX_HOLDERS; i++) {
    const hl_holder_t *h = &st->holders[i];
    if (append(holders,
               dict_of(8, "pid", PyLong_FromLong(h->pid), "exclusive", BOOL(h->exclusive),
                       "weight", U64(h->weight), "weight_source", text(h->weight_source),
                       "rss", U64(h->rss), "held_for", PyFloat_FromDouble(h->held_for), "host",
                       text(h->host), "label", text(h->label))) < 0)
      goto fail;
  }
  PyObject *rec = st->has_record || st->stale_record ? record_dict(&st->record)
                                                     : Py_NewRef(Py_None);
  return dict_of(
      17, "held", BOOL(st->held), "holder_pid", PyLong_FromLong(st->holder_pid), "has_record",
      BOOL(st->has_record), "stale_record", BOOL(st->stale_record), "record", rec, "held_for",
      st->held_for >= 0 ? PyFloat_FromDouble(st->held_for) : Py_NewRef(Py_None), "waiters",
      waiters, "method", PyUnicode_FromString(st->method ? st->method : "none"), "kind",
      PyUnicode_FromString(st->kind ? st->kind : "none"), "holders", holders, "shared",
      BOOL(st->shared), "budget", U64(st->budget), "free_bytes",
      st->free_known ? U64(st->free_bytes) : Py_NewRef(Py_None), "other_content",
      BOOL(st->other_content), "deleted_file", BOOL(st->deleted_file), "nwaiters",
      PyLong_FromLong(st->nwaiters), "nholders", PyLong_FromLong(st->nholders));
fail:
  Py_XDECREF(waiters);
  Py_XDECREF(holders);
  return NULL;
}

/* hl_status() for a path or URL object into a heap copy (the struct is
 * about 100 KiB: too big for a thread's stack with room to spare); NULL
 * with an exception set.  Free with PyMem_Free. */
static hl_status_t *status_of(PyObject *arg) {
  PyObject *pathobj = path_bytes(arg);
  const char *path = pathobj ? PyBytes_AsString(pathobj) : NULL;
  hl_status_t *st = path ? PyMem_Malloc(sizeof(*st)) : NULL;
  if (st == NULL) {
    if (path != NULL)
      PyErr_NoMemory();
    Py_XDECREF(pathobj);
    return NULL;
  }
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_status(path, st);
  Py_END_ALLOW_THREADS
  if (rc < 0) {
    raise_hl(rc, path, NULL);
    PyMem_Free(st);
    st = NULL;
  }
  Py_DECREF(pathobj);
  return st;
}

static PyObject *mod_status(PyObject *m, PyObject *arg) {
  (void)m;
  hl_status_t *st = status_of(arg);
  if (st == NULL)
    return NULL;
  PyObject *d = status_dict(st);
  PyMem_Free(st);
  return d;
}

static PyObject *mod_describe_holder(PyObject *m, PyObject *arg) {
  (void)m;
  char buf[512];
  hl_status_t *st = status_of(arg);
  if (st == NULL)
    return NULL;
  hl_holder_describe(st, buf, sizeof(buf));
  PyMem_Free(st);
  return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)strlen(buf), "replace");
}

static PyObject *mod_resolve_path(PyObject *m, PyObject *args) {
  (void)m;
  const char *root = NULL;
  if (!PyArg_ParseTuple(args, "|z", &root))
    return NULL;
  hl_path_t p;
  int rc = hl_path_resolve(root, &p);
  if (rc < 0)
    return raise_hl(rc, root ? root : ".", rc == HL_EENV ? p.why : NULL);
  /* The path comes from the environment: any bytes, decoded as os.fsdecode
   * would (surrogateescape), so that it names the same file again. */
  return Py_BuildValue("(NNN)", PyUnicode_DecodeFSDefault(p.path), text(p.source), text(p.why));
}

static PyObject *mod_proc_cmdline(PyObject *m, PyObject *arg) {
  (void)m;
  long pid = PyLong_AsLong(arg);
  if (pid == -1 && PyErr_Occurred())
    return NULL;
  char buf[HL_CMD_MAX];
  if (hl_proc_cmdline(pid, buf, sizeof(buf)) < 0)
    Py_RETURN_NONE;
  return redacted(buf); /* for showing: passwords masked */
}

static PyObject *mod_mem_available(PyObject *m, PyObject *Py_UNUSED(ignored)) {
  (void)m;
  uint64_t b;
  if (hl_mem_available(&b) < 0)
    Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(b);
}

static PyObject *mod_tree_rss(PyObject *m, PyObject *arg) {
  (void)m;
  long pid = PyLong_AsLong(arg);
  if (pid == -1 && PyErr_Occurred())
    return NULL;
  uint64_t b;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_mem_tree_rss(pid, &b);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(b);
}

static PyObject *mod_gguf_info(PyObject *m, PyObject *arg) {
  (void)m;
  PyObject *pathobj = path_bytes(arg);
  const char *path = pathobj ? PyBytes_AsString(pathobj) : NULL;
  if (path == NULL) {
    Py_XDECREF(pathobj);
    return NULL;
  }
  hl_gguf_t g;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_gguf_read(path, &g);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    raise_hl(rc, path, rc == HL_EFORMAT ? "not a GGUF model file (or a damaged one)" : NULL);
  Py_DECREF(pathobj);
  if (rc < 0)
    return NULL;
  return Py_BuildValue("{s:I,s:K,s:K,s:K,s:K,s:s,s:s,s:K}", "version", g.version, "n_tensors",
                       (unsigned long long)g.n_tensors, "n_kv", (unsigned long long)g.n_kv,
                       "file_size", (unsigned long long)g.file_size, "tensor_bytes",
                       (unsigned long long)g.tensor_bytes, "architecture", g.architecture,
                       "name", g.name, "context_length", (unsigned long long)g.context_length);
}

static PyObject *mod_gguf_estimate(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"path", "n_ctx", NULL};
  PyObject *pathobj;
  unsigned long long n_ctx = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|K", kwlist, PyUnicode_FSConverter, &pathobj,
                                   &n_ctx))
    return NULL;
  const char *path = PyBytes_AsString(pathobj);
  hl_gguf_estimate_t e;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_gguf_estimate(path, n_ctx, &e);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    raise_hl(rc, path, rc == HL_EFORMAT ? "not a GGUF model file (or a damaged one)" : NULL);
  Py_DECREF(pathobj);
  if (rc < 0)
    return NULL;
  return dict_of(9, "total", U64(e.total), "weights", U64(e.weights), "kv_cache",
                 U64(e.kv_cache), "overhead", U64(e.overhead), "context_length",
                 U64(e.context_length), "block_count", U64(e.block_count), "head_count",
                 U64(e.head_count), "head_count_kv", U64(e.head_count_kv), "embedding_length",
                 U64(e.embedding_length));
}

static PyObject *mod_size_parse(PyObject *m, PyObject *arg) {
  (void)m;
  Py_ssize_t n;
  const char *t = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &n) : NULL;
  if (t == NULL && PyErr_Occurred())
    return NULL;
  uint64_t bytes;
  if (t == NULL || (size_t)n != strlen(t) || hl_size_parse(t, &bytes) < 0) {
    PyErr_Format(PyExc_ValueError,
                 "%R is not a size: give bytes (1048576) or a number with a unit K, M, G, T "
                 "(powers of 1024), e.g. 512M, 2G, 1.5GiB", arg);
    return NULL;
  }
  return U64(bytes);
}

static PyObject *mod_size_format(PyObject *m, PyObject *arg) {
  (void)m;
  uint64_t bytes;
  if (bytes_arg(arg, "size", &bytes) < 0)
    return NULL;
  char buf[64];
  return PyUnicode_FromString(hl_size_format(bytes, buf, sizeof(buf)));
}

static PyObject *mod_mem_free(PyObject *m, PyObject *Py_UNUSED(ignored)) {
  (void)m;
  uint64_t b;
  if (hl_mem_free(&b) < 0)
    Py_RETURN_NONE;
  return U64(b);
}

static PyObject *mod_redact(PyObject *m, PyObject *arg) {
  (void)m;
  PyObject *b = path_bytes(arg);
  if (b == NULL)
    return NULL;
  PyObject *r = redacted(PyBytes_AsString(b));
  Py_DECREF(b);
  return r;
}

static PyObject *mod_target_kind(PyObject *m, PyObject *arg) {
  (void)m;
  PyObject *b = path_bytes(arg);
  if (b == NULL)
    return NULL;
  int k = hl_target_kind(PyBytes_AsString(b));
  Py_DECREF(b);
  return PyUnicode_FromString(k == HL_TARGET_PG ? "pg" : k == HL_TARGET_FILE ? "file" : "unknown");
}

static PyMethodDef module_methods[] = {
    {"redact", mod_redact, METH_O,
     "redact(text) -> text with every password masked (URL user info, password=)."},
    {"target_kind", mod_target_kind, METH_O,
     "target_kind(target) -> 'file', 'pg', or 'unknown' (a URL of no known lock server)."},
    {"status", mod_status, METH_O, "status(path) -> dict: who holds the lock, who waits."},
    {"describe_holder", mod_describe_holder, METH_O,
     "describe_holder(path) -> 'held by pid 4242 (label) for 12 s'"},
    {"resolve_path", mod_resolve_path, METH_VARARGS,
     "resolve_path(root=None) -> (path, source, why); ValueError names a bad variable."},
    {"proc_cmdline", mod_proc_cmdline, METH_O, "proc_cmdline(pid) -> str or None"},
    {"mem_available", mod_mem_available, METH_NOARGS, "MemAvailable in bytes, or None."},
    {"tree_rss", mod_tree_rss, METH_O, "RSS of pid and its descendants in bytes, or None."},
    {"gguf_info", mod_gguf_info, METH_O, "gguf_info(path) -> dict of a GGUF model's header."},
    {"gguf_estimate", (PyCFunction)(void (*)(void))mod_gguf_estimate,
     METH_VARARGS | METH_KEYWORDS,
     "gguf_estimate(path, n_ctx=0) -> dict: expected peak memory of running a GGUF model "
     "(total, weights, kv_cache, overhead, ...); n_ctx 0 = the model's context length."},
    {"size_parse", mod_size_parse, METH_O,
     "size_parse(text) -> int: '512M', '2G', '1.5GiB', '1048576'; ValueError names the text."},
    {"size_format", mod_size_format, METH_O, "size_format(nbytes) -> '1.5 GiB'"},
    {"mem_free", mod_mem_free, METH_NOARGS,
     "Memory free for new work (MemAvailable within this cgroup's limit) in bytes, or None."},
    {NULL, NULL, 0, NULL}};

static int module_exec(PyObject *m) {
  PyObject *type = PyType_FromModuleAndSpec(m, &Lock_spec, NULL);
  if (type == NULL)
    return -1;
  int rc = PyModule_AddObjectRef(m, "Lock", type);
  Py_DECREF(type);
  if (rc < 0)
    return -1;
  if (PyModule_AddIntConstant(m, "FLAG_OTHER_CONTENT", HL_FLAG_OTHER_CONTENT) < 0 ||
      PyModule_AddIntConstant(m, "FLAG_LOST", HL_FLAG_LOST) < 0)
    return -1;
  return PyModule_AddStringConstant(m, "VERSION", hl_version());
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec}, {0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                                        "heavylock._native",
                                        "The C core of heavylock (libheavylock).",
                                        0,
                                        module_methods,
                                        module_slots,
                                        NULL,
                                        NULL,
                                        NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModuleDef_Init(&module_def); }
