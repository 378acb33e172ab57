/*
 * pq.h - the part of libpq the PostgreSQL kind uses, loaded at run time.
 *
 * Why not link libpq
 * ------------------
 * Most users never name a postgresql:// target, and libpq drags in a TLS
 * stack, Kerberos and LDAP (a wheel that bundles them is 16 MB for 170 KB
 * of heavylock).  So the library needs only libc: pq.c dlopen()s libpq the
 * first time a URL is used, resolves the functions below once, and a
 * missing libpq is an error that names the package to install.  The build
 * needs no libpq headers either: the types and prototypes we use are
 * declared here, from libpq's stable ABI (libpq.so.5, unchanged since
 * PostgreSQL 8.x; the enum values and structs below are part of it).
 *
 * Every function goes through the table hl__pq, resolved by hl__pq_load().
 * The names stay libpq's (PQexec(...)): the macros at the end point them at
 * the table, so kind-pg.c reads like ordinary libpq code.
 */
#ifndef HL_PQ_H
#define HL_PQ_H

#include <stddef.h>

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;
typedef struct pg_cancel PGcancel;

typedef enum { CONNECTION_OK, CONNECTION_BAD } ConnStatusType;

typedef enum {
  PGRES_POLLING_FAILED = 0,
  PGRES_POLLING_READING,
  PGRES_POLLING_WRITING,
  PGRES_POLLING_OK,
  PGRES_POLLING_ACTIVE
} PostgresPollingStatusType;

typedef enum {
  PGRES_EMPTY_QUERY = 0,
  PGRES_COMMAND_OK,
  PGRES_TUPLES_OK,
  PGRES_COPY_OUT,
  PGRES_COPY_IN,
  PGRES_BAD_RESPONSE,
  PGRES_NONFATAL_ERROR,
  PGRES_FATAL_ERROR
} ExecStatusType;

typedef struct pgNotify {
  char *relname;
  int be_pid;
  char *extra;
  struct pgNotify *next; /* private to libpq */
} PGnotify;

typedef struct _PQconninfoOption {
  char *keyword;
  char *envvar;
  char *compiled;
  char *val;
  char *label;
  char *dispchar;
  int dispsize;
} PQconninfoOption;

typedef unsigned int Oid;
typedef void (*PQnoticeProcessor)(void *arg, const char *message);

#define PG_DIAG_SQLSTATE 'C'
#define PG_DIAG_SEVERITY_NONLOCALIZED 'V'

/* X(return type, name, parameters): every libpq function we call. */
#define HL__PQ_FUNCTIONS(X)                                                                  \
  X(PGconn *, PQconnectdb, (const char *conninfo))                                           \
  X(PGconn *, PQconnectdbParams,                                                             \
    (const char *const *keywords, const char *const *values, int expand_dbname))             \
  X(PGconn *, PQconnectStartParams,                                                          \
    (const char *const *keywords, const char *const *values, int expand_dbname))             \
  X(PostgresPollingStatusType, PQconnectPoll, (PGconn * conn))                               \
  X(void, PQfinish, (PGconn * conn))                                                         \
  X(ConnStatusType, PQstatus, (const PGconn *conn))                                          \
  X(char *, PQerrorMessage, (const PGconn *conn))                                            \
  X(int, PQsocket, (const PGconn *conn))                                                     \
  X(int, PQserverVersion, (const PGconn *conn))                                              \
  X(int, PQlibVersion, (void))                                                               \
  X(char *, PQhost, (const PGconn *conn))                                                    \
  X(char *, PQport, (const PGconn *conn))                                                    \
  X(char *, PQdb, (const PGconn *conn))                                                      \
  X(char *, PQuser, (const PGconn *conn))                                                    \
  X(PQnoticeProcessor, PQsetNoticeProcessor,                                                 \
    (PGconn * conn, PQnoticeProcessor proc, void *arg))                                      \
  X(PGresult *, PQexec, (PGconn * conn, const char *query))                                  \
  X(PGresult *, PQexecParams,                                                                \
    (PGconn * conn, const char *command, int nParams, const Oid *paramTypes,                 \
     const char *const *paramValues, const int *paramLengths, const int *paramFormats,       \
     int resultFormat))                                                                      \
  X(int, PQsendQueryParams,                                                                  \
    (PGconn * conn, const char *command, int nParams, const Oid *paramTypes,                 \
     const char *const *paramValues, const int *paramLengths, const int *paramFormats,       \
     int resultFormat))                                                                      \
  X(PGresult *, PQgetResult, (PGconn * conn))                                                \
  X(int, PQconsumeInput, (PGconn * conn))                                                    \
  X(int, PQisBusy, (PGconn * conn))                                                          \
  X(int, PQflush, (PGconn * conn))                                                           \
  X(ExecStatusType, PQresultStatus, (const PGresult *res))                                   \
  X(char *, PQresultErrorMessage, (const PGresult *res))                                     \
  X(char *, PQresultErrorField, (const PGresult *res, int fieldcode))                        \
  X(int, PQntuples, (const PGresult *res))                                                   \
  X(char *, PQgetvalue, (const PGresult *res, int tup_num, int field_num))                   \
  X(int, PQgetisnull, (const PGresult *res, int tup_num, int field_num))                     \
  X(char *, PQcmdTuples, (PGresult * res))                                                   \
  X(void, PQclear, (PGresult * res))                                                         \
  X(PGnotify *, PQnotifies, (PGconn * conn))                                                 \
  X(void, PQfreemem, (void *ptr))                                                            \
  X(PGcancel *, PQgetCancel, (PGconn * conn))                                                \
  X(void, PQfreeCancel, (PGcancel * cancel))                                                 \
  X(int, PQcancel, (PGcancel * cancel, char *errbuf, int errbufsize))                        \
  X(PQconninfoOption *, PQconninfoParse, (const char *conninfo, char **errmsg))              \
  X(void, PQconninfoFree, (PQconninfoOption * connOptions))

typedef struct hl__pq_s {
#define HL__PQ_MEMBER(ret, name, params) ret(*name) params;
  HL__PQ_FUNCTIONS(HL__PQ_MEMBER)
#undef HL__PQ_MEMBER
} hl__pq_t;

extern hl__pq_t hl__pq;

/*
 * Load libpq once per process (thread-safe): HEAVYLOCK_LIBPQ when set (a
 * path or a file name for dlopen), else the platform's usual names.  0, or
 * -ENOSYS with `why` (when not NULL) saying what was tried and which package
 * to install.  Later calls return the first outcome.
 */
int hl__pq_load(const char **why);

#ifndef HL__PQ_NO_MACROS
#define PQconnectdb hl__pq.PQconnectdb
#define PQconnectdbParams hl__pq.PQconnectdbParams
#define PQconnectStartParams hl__pq.PQconnectStartParams
#define PQconnectPoll hl__pq.PQconnectPoll
#define PQfinish hl__pq.PQfinish
#define PQstatus hl__pq.PQstatus
#define PQerrorMessage hl__pq.PQerrorMessage
#define PQsocket hl__pq.PQsocket
#define PQserverVersion hl__pq.PQserverVersion
#define PQlibVersion hl__pq.PQlibVersion
#define PQhost hl__pq.PQhost
#define PQport hl__pq.PQport
#define PQdb hl__pq.PQdb
#define PQuser hl__pq.PQuser
#define PQsetNoticeProcessor hl__pq.PQsetNoticeProcessor
#define PQexec hl__pq.PQexec
#define PQexecParams hl__pq.PQexecParams
#define PQsendQueryParams hl__pq.PQsendQueryParams
#define PQgetResult hl__pq.PQgetResult
#define PQconsumeInput hl__pq.PQconsumeInput
#define PQisBusy hl__pq.PQisBusy
#define PQflush hl__pq.PQflush
#define PQresultStatus hl__pq.PQresultStatus
#define PQresultErrorMessage hl__pq.PQresultErrorMessage
#define PQresultErrorField hl__pq.PQresultErrorField
#define PQntuples hl__pq.PQntuples
#define PQgetvalue hl__pq.PQgetvalue
#define PQgetisnull hl__pq.PQgetisnull
#define PQcmdTuples hl__pq.PQcmdTuples
#define PQclear hl__pq.PQclear
#define PQnotifies hl__pq.PQnotifies
#define PQfreemem hl__pq.PQfreemem
#define PQgetCancel hl__pq.PQgetCancel
#define PQfreeCancel hl__pq.PQfreeCancel
#define PQcancel hl__pq.PQcancel
#define PQconninfoParse hl__pq.PQconninfoParse
#define PQconninfoFree hl__pq.PQconninfoFree
#endif

#endif
