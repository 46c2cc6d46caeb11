//! Every x86_64 system call, with how a migrated process gets it served
//! (the gVisor `linux64.go` idea): run locally by the kernel on the remote
//! node, emulated by the remote supervisor, forwarded to the home deputy, or
//! served by bringing the process home.

/// How a call made by a migrated process is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Allowed in the BPF filter: the remote kernel runs it, no trap at all.
    Local,
    /// Answered by the remote supervisor (identity calls, signals to itself).
    Emulated,
    /// Marshalled to the deputy at home and run there with the process's identity.
    Forward,
    /// Cannot be served away: the process goes home and the call runs there.
    Home,
}

/// Length of a pointer argument's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Len {
    Const(usize),
    /// The value of argument i.
    Val(usize),
    /// Argument i times a constant.
    ArgMul(usize, usize),
    /// The u32 that argument i points to (a socklen_t in/out).
    DerefU32(usize),
    /// An fd_set sized for nfds = argument i.
    FdSet(usize),
}

/// One argument of a forwarded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A plain value.
    V,
    /// A file descriptor number (checked against the deputy's reserved range).
    Fd,
    /// A NUL-terminated path or name, read from the process.
    Path,
    In(Len),
    Out(Len),
    /// Out buffer whose valid length is the call's result (read, getdents64).
    OutRet(Len),
    /// Out buffer of `result * n` valid bytes (epoll_wait).
    OutRetN(Len, usize),
    InOut(Len),
}

use Arg::*;
use Class::*;
use Len::*;

/// (number, name, class, note)
pub struct Entry {
    pub nr: u32,
    pub name: &'static str,
    pub class: Class,
    pub note: &'static str,
}

macro_rules! t {
    ($($nr:expr, $name:expr, $class:expr, $note:expr;)*) => { &[$(Entry { nr: $nr, name: $name, class: $class, note: $note }),*] };
}

pub const TABLE: &[Entry] = t! {
    0, "read", Forward, "fds live at home";
    1, "write", Forward, "fds live at home";
    2, "open", Forward, "files are the home node's; /dev/tty opens at home (the process's controlling terminal)";
    3, "close", Forward, "the deputy is the only holder of the fds";
    4, "stat", Forward, "path resolved at home";
    5, "fstat", Forward, "fd at home";
    6, "lstat", Forward, "path resolved at home";
    7, "poll", Forward, "polls home fds";
    8, "lseek", Forward, "offsets shared with home";
    9, "mmap", Local, "private anonymous: in BPF; shared anonymous: run here (it moves with the process); a file this node has identical: installed at the same fd number (ADDFD) and run here; writable shared or missing files: home";
    10, "mprotect", Local, "memory is local";
    11, "munmap", Local, "memory is local";
    12, "brk", Local, "memory is local";
    13, "rt_sigaction", Local, "signal actions live in the guest";
    14, "rt_sigprocmask", Local, "signal mask lives in the guest";
    15, "rt_sigreturn", Local, "signal frames are local";
    16, "ioctl", Forward, "terminal and fd ioctls with known layouts; others go home";
    17, "pread64", Forward, "fds live at home";
    18, "pwrite64", Forward, "fds live at home";
    19, "readv", Forward, "gathered into one read at home";
    20, "writev", Forward, "gathered into one write at home";
    21, "access", Forward, "path resolved at home";
    22, "pipe", Forward, "pipes are created at home";
    23, "select", Forward, "selects on home fds";
    24, "sched_yield", Local, "scheduling is local";
    25, "mremap", Local, "memory is local";
    26, "msync", Local, "private memory only";
    27, "mincore", Local, "memory is local";
    28, "madvise", Local, "memory is local";
    29, "shmget", Home, "SysV IPC lives at home";
    30, "shmat", Home, "SysV IPC lives at home";
    31, "shmctl", Home, "SysV IPC lives at home";
    32, "dup", Forward, "fd table is at home";
    33, "dup2", Forward, "fd table is at home";
    34, "pause", Local, "waits for a signal delivered to the guest";
    35, "nanosleep", Local, "time is local";
    36, "getitimer", Local, "interval timers run in the guest and move with it";
    37, "alarm", Local, "timers run in the guest";
    38, "setitimer", Local, "interval timers run in the guest and move with it";
    39, "getpid", Emulated, "answers the home pid";
    40, "sendfile", Forward, "both fds at home";
    41, "socket", Forward, "sockets live at home";
    42, "connect", Forward, "sockets live at home";
    43, "accept", Forward, "sockets live at home";
    44, "sendto", Forward, "sockets live at home";
    45, "recvfrom", Forward, "sockets live at home";
    46, "sendmsg", Forward, "gathered; SCM_RIGHTS numbers are home numbers";
    47, "recvmsg", Forward, "scattered; SCM_RIGHTS numbers are home numbers";
    48, "shutdown", Forward, "sockets live at home";
    49, "bind", Forward, "sockets live at home";
    50, "listen", Forward, "sockets live at home";
    51, "getsockname", Forward, "sockets live at home";
    52, "getpeername", Forward, "sockets live at home";
    53, "socketpair", Forward, "sockets live at home";
    54, "setsockopt", Forward, "sockets live at home; options with a plain value of optlen bytes (syscalls::sockopt_plain) are forwarded, others go home";
    55, "getsockopt", Forward, "sockets live at home; options the kernel writes as at most *optlen plain bytes (syscalls::sockopt_plain) are forwarded, others go home";
    56, "clone", Home, "new tasks are created at home";
    57, "fork", Home, "new processes are created at home";
    58, "vfork", Home, "new processes are created at home";
    59, "execve", Home, "a new program starts at home";
    60, "exit", Local, "traps: alone it runs here (the placeholder exits with the same status); a thread of several ends at home";
    61, "wait4", Forward, "children live at home: ECHILD when none, else go home";
    62, "kill", Emulated, "to itself: delivered locally; others: forwarded";
    63, "uname", Forward, "the home node's identity";
    64, "semget", Home, "SysV IPC lives at home";
    65, "semop", Home, "SysV IPC lives at home";
    66, "semctl", Home, "SysV IPC lives at home";
    67, "shmdt", Home, "SysV IPC lives at home";
    68, "msgget", Home, "SysV IPC lives at home";
    69, "msgsnd", Home, "SysV IPC lives at home";
    70, "msgrcv", Home, "SysV IPC lives at home";
    71, "msgctl", Home, "SysV IPC lives at home";
    72, "fcntl", Forward, "value commands forwarded (F_SETOWN with the home pid: the placeholder hands SIGIO on); record locks and F_SETOWN_EX/F_GETOWN_EX (a thread named by home tid) go home";
    73, "flock", Forward, "per open file description, held at home";
    74, "fsync", Forward, "fds live at home";
    75, "fdatasync", Forward, "fds live at home";
    76, "truncate", Forward, "path resolved at home";
    77, "ftruncate", Forward, "fds live at home";
    78, "getdents", Forward, "directories at home";
    79, "getcwd", Forward, "cwd is kept by the deputy";
    80, "chdir", Forward, "cwd is kept by the deputy";
    81, "fchdir", Forward, "cwd is kept by the deputy";
    82, "rename", Forward, "path resolved at home";
    83, "mkdir", Forward, "path resolved at home";
    84, "rmdir", Forward, "path resolved at home";
    85, "creat", Forward, "path resolved at home";
    86, "link", Forward, "path resolved at home";
    87, "unlink", Forward, "path resolved at home";
    88, "symlink", Forward, "path resolved at home";
    89, "readlink", Forward, "path resolved at home";
    90, "chmod", Forward, "path resolved at home";
    91, "fchmod", Forward, "fds live at home";
    92, "chown", Forward, "path resolved at home";
    93, "fchown", Forward, "fds live at home";
    94, "lchown", Forward, "path resolved at home";
    95, "umask", Forward, "file creation happens at home";
    96, "gettimeofday", Local, "time is local (vdso)";
    97, "getrlimit", Local, "limits were restored in the guest";
    98, "getrusage", Local, "usage of the guest";
    99, "sysinfo", Forward, "the home node's view";
    100, "times", Local, "usage of the guest";
    101, "ptrace", Home, "tracing happens at home";
    102, "getuid", Emulated, "home credentials";
    103, "syslog", Home, "privileged; runs at home";
    104, "getgid", Emulated, "home credentials";
    105, "setuid", Home, "credentials change at home";
    106, "setgid", Home, "credentials change at home";
    107, "geteuid", Emulated, "home credentials";
    108, "getegid", Emulated, "home credentials";
    109, "setpgid", Home, "process groups live at home";
    110, "getppid", Forward, "the home parent, read fresh by the deputy";
    111, "getpgrp", Emulated, "home process group";
    112, "setsid", Home, "sessions live at home";
    113, "setreuid", Home, "credentials change at home";
    114, "setregid", Home, "credentials change at home";
    115, "getgroups", Emulated, "home credentials";
    116, "setgroups", Home, "credentials change at home";
    117, "setresuid", Home, "credentials change at home";
    118, "getresuid", Emulated, "home credentials";
    119, "setresgid", Home, "credentials change at home";
    120, "getresgid", Emulated, "home credentials";
    121, "getpgid", Emulated, "own group answered locally; others go home";
    122, "setfsuid", Home, "credentials change at home";
    123, "setfsgid", Home, "credentials change at home";
    124, "getsid", Emulated, "own session answered locally; others go home";
    125, "capget", Home, "capabilities are the home process's";
    126, "capset", Home, "capabilities are the home process's";
    127, "rt_sigpending", Local, "signals are delivered to the guest";
    128, "rt_sigtimedwait", Local, "signals are delivered to the guest";
    129, "rt_sigqueueinfo", Home, "signals to other processes at home";
    130, "rt_sigsuspend", Local, "signals are delivered to the guest";
    131, "sigaltstack", Local, "signal stack is local memory";
    132, "utime", Forward, "path resolved at home";
    133, "mknod", Forward, "path resolved at home";
    134, "uselib", Home, "obsolete; runs at home";
    135, "personality", Home, "execution domain is the home process's";
    136, "ustat", Home, "obsolete; runs at home";
    137, "statfs", Forward, "path resolved at home";
    138, "fstatfs", Forward, "fds live at home";
    139, "sysfs", Home, "obsolete; runs at home";
    140, "getpriority", Home, "priorities of home processes";
    141, "setpriority", Home, "priorities of home processes";
    142, "sched_setparam", Home, "scheduling of home processes";
    143, "sched_getparam", Home, "scheduling of home processes";
    144, "sched_setscheduler", Home, "scheduling of home processes";
    145, "sched_getscheduler", Home, "scheduling of home processes";
    146, "sched_get_priority_max", Local, "constant";
    147, "sched_get_priority_min", Local, "constant";
    148, "sched_rr_get_interval", Home, "scheduling of home processes";
    149, "mlock", Local, "memory is local";
    150, "munlock", Local, "memory is local";
    151, "mlockall", Local, "memory is local";
    152, "munlockall", Local, "memory is local";
    153, "vhangup", Home, "terminals live at home";
    154, "modify_ldt", Home, "LDT state does not migrate";
    155, "pivot_root", Home, "privileged; runs at home";
    156, "_sysctl", Home, "obsolete; runs at home";
    157, "prctl", Emulated, "settings kept in the guest and carried in the image; dumpable, no_new_privs, keepcaps, securebits and pdeathsig read as at home; changing them, and the capability sets, runs at home";
    158, "arch_prctl", Local, "fs/gs base is local";
    159, "adjtimex", Home, "clock of the home node";
    160, "setrlimit", Local, "limits of the guest; carried home in the image";
    161, "chroot", Home, "root directory is at home";
    162, "sync", Forward, "home file systems";
    163, "acct", Home, "privileged; runs at home";
    164, "settimeofday", Home, "clock of the home node";
    165, "mount", Home, "privileged; runs at home";
    166, "umount2", Home, "privileged; runs at home";
    167, "swapon", Home, "privileged; runs at home";
    168, "swapoff", Home, "privileged; runs at home";
    169, "reboot", Home, "privileged; runs at home";
    170, "sethostname", Home, "privileged; runs at home";
    171, "setdomainname", Home, "privileged; runs at home";
    172, "iopl", Home, "privileged; runs at home";
    173, "ioperm", Home, "privileged; runs at home";
    174, "create_module", Home, "removed from Linux";
    175, "init_module", Home, "privileged; runs at home";
    176, "delete_module", Home, "privileged; runs at home";
    177, "get_kernel_syms", Home, "removed from Linux";
    178, "query_module", Home, "removed from Linux";
    179, "quotactl", Home, "home file systems";
    180, "nfsservctl", Home, "removed from Linux";
    181, "getpmsg", Home, "unimplemented in Linux";
    182, "putpmsg", Home, "unimplemented in Linux";
    183, "afs_syscall", Home, "unimplemented in Linux";
    184, "tuxcall", Home, "unimplemented in Linux";
    185, "security", Home, "unimplemented in Linux";
    186, "gettid", Emulated, "answers the calling thread's home tid";
    187, "readahead", Forward, "fds live at home";
    188, "setxattr", Forward, "path resolved at home";
    189, "lsetxattr", Forward, "path resolved at home";
    190, "fsetxattr", Forward, "fds live at home";
    191, "getxattr", Forward, "path resolved at home";
    192, "lgetxattr", Forward, "path resolved at home";
    193, "fgetxattr", Forward, "fds live at home";
    194, "listxattr", Forward, "path resolved at home";
    195, "llistxattr", Forward, "path resolved at home";
    196, "flistxattr", Forward, "fds live at home";
    197, "removexattr", Forward, "path resolved at home";
    198, "lremovexattr", Forward, "path resolved at home";
    199, "fremovexattr", Forward, "fds live at home";
    200, "tkill", Emulated, "to itself: delivered locally; others go home";
    201, "time", Local, "time is local (vdso)";
    202, "futex", Local, "memory is local; priority-inheritance operations trap and go home with several threads (their words hold home tids)";
    203, "sched_setaffinity", Local, "CPU placement on the node that runs it; a thread named by its home tid is translated";
    204, "sched_getaffinity", Local, "CPU placement on the node that runs it; a thread named by its home tid is translated";
    205, "set_thread_area", Local, "TLS is local";
    206, "io_setup", Home, "AIO contexts live at home";
    207, "io_destroy", Home, "AIO contexts live at home";
    208, "io_getevents", Home, "AIO contexts live at home";
    209, "io_submit", Home, "AIO contexts live at home";
    210, "io_cancel", Home, "AIO contexts live at home";
    211, "get_thread_area", Local, "TLS is local";
    212, "lookup_dcookie", Home, "removed from Linux";
    213, "epoll_create", Forward, "epoll instances live at home";
    214, "epoll_ctl_old", Home, "unimplemented in Linux";
    215, "epoll_wait_old", Home, "unimplemented in Linux";
    216, "remap_file_pages", Home, "file mappings live at home";
    217, "getdents64", Forward, "directories at home";
    218, "set_tid_address", Local, "memory is local";
    219, "restart_syscall", Local, "restarts a local call";
    220, "semtimedop", Home, "SysV IPC lives at home";
    221, "fadvise64", Forward, "fds live at home";
    222, "timer_create", Local, "POSIX timers run in the guest and move with it, under their ids; one that signals a thread by tid (SIGEV_THREAD_ID) or counts another thread's CPU time is made at home";
    223, "timer_settime", Local, "POSIX timers run in the guest and move with it";
    224, "timer_gettime", Local, "POSIX timers run in the guest and move with it";
    225, "timer_getoverrun", Local, "POSIX timers run in the guest and move with it";
    226, "timer_delete", Local, "POSIX timers run in the guest and move with it";
    227, "clock_settime", Home, "clock of the home node";
    228, "clock_gettime", Local, "time is local (vdso)";
    229, "clock_getres", Local, "time is local";
    230, "clock_nanosleep", Local, "time is local";
    231, "exit_group", Local, "the home placeholder exits with the same status";
    232, "epoll_wait", Forward, "epoll instances live at home";
    233, "epoll_ctl", Forward, "epoll instances live at home";
    234, "tgkill", Emulated, "to itself: delivered locally; others go home";
    235, "utimes", Forward, "path resolved at home";
    236, "vserver", Home, "unimplemented in Linux";
    237, "mbind", Local, "memory policy is local";
    238, "set_mempolicy", Local, "memory policy is local";
    239, "get_mempolicy", Local, "memory policy is local";
    240, "mq_open", Home, "POSIX message queues live at home";
    241, "mq_unlink", Home, "POSIX message queues live at home";
    242, "mq_timedsend", Home, "POSIX message queues live at home";
    243, "mq_timedreceive", Home, "POSIX message queues live at home";
    244, "mq_notify", Home, "POSIX message queues live at home";
    245, "mq_getsetattr", Home, "POSIX message queues live at home";
    246, "kexec_load", Home, "privileged; runs at home";
    247, "waitid", Forward, "children live at home: ECHILD when none, else go home";
    248, "add_key", Home, "keyrings live at home";
    249, "request_key", Home, "keyrings live at home";
    250, "keyctl", Home, "keyrings live at home";
    251, "ioprio_set", Home, "I/O priorities of home processes";
    252, "ioprio_get", Home, "I/O priorities of home processes";
    253, "inotify_init", Forward, "watches home files";
    254, "inotify_add_watch", Forward, "watches home files";
    255, "inotify_rm_watch", Forward, "watches home files";
    256, "migrate_pages", Home, "NUMA of home processes";
    257, "openat", Forward, "files are the home node's; /dev/tty opens at home (the process's controlling terminal)";
    258, "mkdirat", Forward, "path resolved at home";
    259, "mknodat", Forward, "path resolved at home";
    260, "fchownat", Forward, "path resolved at home";
    261, "futimesat", Forward, "path resolved at home";
    262, "newfstatat", Forward, "path resolved at home";
    263, "unlinkat", Forward, "path resolved at home";
    264, "renameat", Forward, "path resolved at home";
    265, "linkat", Forward, "path resolved at home";
    266, "symlinkat", Forward, "path resolved at home";
    267, "readlinkat", Forward, "path resolved at home";
    268, "fchmodat", Forward, "path resolved at home";
    269, "faccessat", Forward, "path resolved at home";
    270, "pselect6", Forward, "without a signal mask; with one it goes home";
    271, "ppoll", Forward, "without a signal mask; with one it goes home";
    272, "unshare", Home, "namespaces of the home process";
    273, "set_robust_list", Local, "memory is local";
    274, "get_robust_list", Local, "memory is local";
    275, "splice", Forward, "both fds at home";
    276, "tee", Forward, "both fds at home";
    277, "sync_file_range", Forward, "fds live at home";
    278, "vmsplice", Home, "splices local memory into a home pipe";
    279, "move_pages", Home, "NUMA of home processes";
    280, "utimensat", Forward, "path resolved at home";
    281, "epoll_pwait", Forward, "without a signal mask; with one it goes home";
    282, "signalfd", Home, "signals are delivered to the guest";
    283, "timerfd_create", Forward, "timer fds live at home";
    284, "eventfd", Forward, "event fds live at home";
    285, "fallocate", Forward, "fds live at home";
    286, "timerfd_settime", Forward, "timer fds live at home";
    287, "timerfd_gettime", Forward, "timer fds live at home";
    288, "accept4", Forward, "sockets live at home";
    289, "signalfd4", Home, "signals are delivered to the guest";
    290, "eventfd2", Forward, "event fds live at home";
    291, "epoll_create1", Forward, "epoll instances live at home";
    292, "dup3", Forward, "fd table is at home";
    293, "pipe2", Forward, "pipes are created at home";
    294, "inotify_init1", Forward, "watches home files";
    295, "preadv", Forward, "gathered into one pread at home";
    296, "pwritev", Forward, "gathered into one pwrite at home";
    297, "rt_tgsigqueueinfo", Home, "signals to other processes at home";
    298, "perf_event_open", Home, "perf events of home processes";
    299, "recvmmsg", Home, "multi-message socket calls run at home";
    300, "fanotify_init", Home, "privileged; runs at home";
    301, "fanotify_mark", Home, "privileged; runs at home";
    302, "prlimit64", Local, "own limits only (BPF checks pid 0); others go home";
    303, "name_to_handle_at", Home, "file handles of home files";
    304, "open_by_handle_at", Home, "file handles of home files";
    305, "clock_adjtime", Home, "clock of the home node";
    306, "syncfs", Forward, "fds live at home";
    307, "sendmmsg", Home, "multi-message socket calls run at home";
    308, "setns", Home, "namespaces of the home process";
    309, "getcpu", Local, "CPU of the node that runs it";
    310, "process_vm_readv", Home, "other processes live at home";
    311, "process_vm_writev", Home, "other processes live at home";
    312, "kcmp", Home, "compares home processes";
    313, "finit_module", Home, "privileged; runs at home";
    314, "sched_setattr", Home, "scheduling of home processes";
    315, "sched_getattr", Home, "scheduling of home processes";
    316, "renameat2", Forward, "path resolved at home";
    317, "seccomp", Home, "its own filter is installed at home (it then stays there)";
    318, "getrandom", Local, "randomness is local";
    319, "memfd_create", Forward, "memfds live at home (mapping one goes home)";
    320, "kexec_file_load", Home, "privileged; runs at home";
    321, "bpf", Home, "privileged; runs at home";
    322, "execveat", Home, "a new program starts at home";
    323, "userfaultfd", Home, "its fd would be local";
    324, "membarrier", Local, "local: the guest's threads are the process's threads";
    325, "mlock2", Local, "memory is local";
    326, "copy_file_range", Forward, "both fds at home";
    327, "preadv2", Home, "flags need the home kernel";
    328, "pwritev2", Home, "flags need the home kernel";
    329, "pkey_mprotect", Local, "memory is local";
    330, "pkey_alloc", Local, "memory is local";
    331, "pkey_free", Local, "memory is local";
    332, "statx", Forward, "path resolved at home";
    333, "io_pgetevents", Home, "AIO contexts live at home";
    334, "rseq", Local, "restartable sequences are local";
    335, "uretprobe", Home, "uprobes of the home kernel";
    424, "pidfd_send_signal", Forward, "pidfds live at home";
    425, "io_uring_setup", Home, "io_uring rings live at home";
    426, "io_uring_enter", Home, "io_uring rings live at home";
    427, "io_uring_register", Home, "io_uring rings live at home";
    428, "open_tree", Home, "mount API of the home node";
    429, "move_mount", Home, "mount API of the home node";
    430, "fsopen", Home, "mount API of the home node";
    431, "fsconfig", Home, "mount API of the home node";
    432, "fsmount", Home, "mount API of the home node";
    433, "fspick", Home, "mount API of the home node";
    434, "pidfd_open", Forward, "pidfds of home processes";
    435, "clone3", Home, "new tasks are created at home";
    436, "close_range", Forward, "fd table is at home (the deputy's reserved fds are kept)";
    437, "openat2", Forward, "files are the home node's; /dev/tty opens at home (the process's controlling terminal)";
    438, "pidfd_getfd", Home, "takes fds of home processes";
    439, "faccessat2", Forward, "path resolved at home";
    440, "process_madvise", Home, "other processes live at home";
    441, "epoll_pwait2", Home, "epoll with a signal mask runs at home";
    442, "mount_setattr", Home, "mount API of the home node";
    443, "quotactl_fd", Home, "home file systems";
    444, "landlock_create_ruleset", Home, "sandboxing applies at home";
    445, "landlock_add_rule", Home, "sandboxing applies at home";
    446, "landlock_restrict_self", Home, "sandboxing applies at home";
    447, "memfd_secret", Home, "secret memory cannot travel";
    448, "process_mrelease", Home, "other processes live at home";
    449, "futex_waitv", Local, "memory is local";
    450, "set_mempolicy_home_node", Local, "memory policy is local";
    451, "cachestat", Forward, "page cache of home files";
    452, "fchmodat2", Forward, "path resolved at home";
    453, "map_shadow_stack", Home, "shadow stacks do not migrate";
    454, "futex_wake", Local, "memory is local";
    455, "futex_wait", Local, "memory is local";
    456, "futex_requeue", Local, "memory is local";
    457, "statmount", Home, "mounts of the home node";
    458, "listmount", Home, "mounts of the home node";
    459, "lsm_get_self_attr", Home, "security attributes of the home process";
    460, "lsm_set_self_attr", Home, "security attributes of the home process";
    461, "lsm_list_modules", Home, "security modules of the home node";
    462, "mseal", Home, "sealed memory cannot be rebuilt";
    463, "setxattrat", Home, "new xattr API runs at home";
    464, "getxattrat", Home, "new xattr API runs at home";
    465, "listxattrat", Home, "new xattr API runs at home";
    466, "removexattrat", Home, "new xattr API runs at home";
    467, "open_tree_attr", Home, "mount API of the home node";
};

/// The table entry for a number, if known.
pub fn entry(nr: u32) -> Option<&'static Entry> {
    TABLE.binary_search_by_key(&nr, |e| e.nr).ok().map(|i| &TABLE[i])
}

/// The class of a call; unknown numbers go home.
pub fn class(nr: u32) -> Class {
    entry(nr).map_or(Home, |e| e.class)
}

pub fn name(nr: u32) -> &'static str {
    entry(nr).map_or("unknown", |e| e.name)
}

/// Marshalling of a forwarded call's arguments. Calls with a special path in
/// the supervisor (readv family, sendmsg/recvmsg, ioctl, fcntl, kill...) have
/// none here.
pub fn spec(nr: u32) -> Option<&'static [Arg]> {
    Some(match nr {
        0 => &[Fd, OutRet(Val(2)), V],
        1 => &[Fd, In(Val(2)), V],
        2 => &[Path, V, V],
        3 => &[Fd],
        4 | 6 => &[Path, Out(Const(144))],
        5 => &[Fd, Out(Const(144))],
        7 => &[InOut(ArgMul(1, 8)), V, V],
        8 => &[Fd, V, V],
        17 => &[Fd, OutRet(Val(2)), V, V],
        18 => &[Fd, In(Val(2)), V, V],
        21 => &[Path, V],
        22 => &[Out(Const(8))],
        23 => &[V, InOut(FdSet(0)), InOut(FdSet(0)), InOut(FdSet(0)), InOut(Const(16))],
        32 => &[Fd],
        33 => &[Fd, Fd],
        40 => &[Fd, Fd, InOut(Const(8)), V],
        41 => &[V, V, V],
        42 | 49 => &[Fd, In(Val(2)), V],
        43 | 51 | 52 => &[Fd, Out(DerefU32(2)), InOut(Const(4))],
        44 => &[Fd, In(Val(2)), V, V, In(Val(5)), V],
        45 => &[Fd, OutRet(Val(2)), V, V, Out(DerefU32(5)), InOut(Const(4))],
        // sendmsg/recvmsg travel flattened by the supervisor: (fd, flags,
        // name, control, data), with the lengths as values (see marshal::msg_trailer).
        46 => &[Fd, V, In(Val(2)), In(Val(3)), In(Val(4))],
        47 => &[Fd, V, Out(Val(2)), Out(Val(3)), OutRet(Val(4))],
        48 | 50 => &[Fd, V],
        53 => &[V, V, V, Out(Const(8))],
        54 => &[Fd, V, V, In(Val(4)), V],
        55 => &[Fd, V, V, Out(DerefU32(4)), InOut(Const(4))],
        61 => &[V, Out(Const(4)), V, Out(Const(144))],
        63 => &[Out(Const(390))],
        73 => &[Fd, V],
        74 | 75 | 81 | 306 => &[Fd],
        76 => &[Path, V],
        77 => &[Fd, V],
        78 | 217 => &[Fd, OutRet(Val(2)), V],
        79 => &[OutRet(Val(1)), V],
        80 | 84 | 87 => &[Path],
        82 | 86 | 88 => &[Path, Path],
        83 | 85 | 90 => &[Path, V],
        89 => &[Path, OutRet(Val(2)), V],
        91 => &[Fd, V],
        92 | 94 => &[Path, V, V],
        93 => &[Fd, V, V],
        95 => &[V],
        99 => &[Out(Const(112))],
        110 => &[],
        132 => &[Path, In(Const(16))],
        133 => &[Path, V, V],
        137 => &[Path, Out(Const(120))],
        138 => &[Fd, Out(Const(120))],
        162 => &[],
        187 => &[Fd, V, V],
        188 | 189 => &[Path, Path, In(Val(3)), V, V],
        190 => &[Fd, Path, In(Val(3)), V, V],
        191 | 192 => &[Path, Path, OutRet(Val(3)), V],
        193 => &[Fd, Path, OutRet(Val(3)), V],
        194 | 195 => &[Path, OutRet(Val(2)), V],
        196 => &[Fd, OutRet(Val(2)), V],
        197 | 198 => &[Path, Path],
        199 => &[Fd, Path],
        213 | 291 | 284 | 294 => &[V],
        221 => &[Fd, V, V, V],
        232 => &[Fd, OutRetN(ArgMul(2, 12), 12), V, V],
        233 => &[Fd, V, Fd, In(Const(12))],
        235 => &[Path, In(Const(32))],
        247 => &[V, V, Out(Const(128)), V, Out(Const(144))],
        253 => &[],
        254 => &[Fd, Path, V],
        255 => &[Fd, V],
        257 => &[Fd, Path, V, V],
        258 => &[Fd, Path, V],
        259 => &[Fd, Path, V, V],
        260 => &[Fd, Path, V, V, V],
        261 => &[Fd, Path, In(Const(32))],
        262 => &[Fd, Path, Out(Const(144)), V],
        263 | 268 => &[Fd, Path, V],
        264 => &[Fd, Path, Fd, Path],
        265 => &[Fd, Path, Fd, Path, V],
        266 => &[Path, Fd, Path],
        267 => &[Fd, Path, OutRet(Val(3)), V],
        269 => &[Fd, Path, V],
        270 => &[V, InOut(FdSet(0)), InOut(FdSet(0)), InOut(FdSet(0)), InOut(Const(16)), V],
        271 => &[InOut(ArgMul(1, 8)), V, InOut(Const(16)), V, V],
        275 => &[Fd, InOut(Const(8)), Fd, InOut(Const(8)), V, V],
        276 => &[Fd, Fd, V, V],
        277 => &[Fd, V, V, V],
        280 => &[Fd, Path, In(Const(32)), V],
        281 => &[Fd, OutRetN(ArgMul(2, 12), 12), V, V, V, V],
        283 => &[V, V],
        285 => &[Fd, V, V, V],
        286 => &[Fd, V, In(Const(32)), Out(Const(32))],
        287 => &[Fd, Out(Const(32))],
        288 => &[Fd, Out(DerefU32(2)), InOut(Const(4)), V],
        290 => &[V, V],
        292 => &[Fd, Fd, V],
        293 => &[Out(Const(8)), V],
        316 => &[Fd, Path, Fd, Path, V],
        319 => &[Path, V],
        326 => &[Fd, InOut(Const(8)), Fd, InOut(Const(8)), V, V],
        332 => &[Fd, Path, V, V, Out(Const(256))],
        424 => &[Fd, V, In(Const(128)), V],
        434 => &[V, V],
        436 => &[V, V, V],
        437 => &[Fd, Path, In(Val(3)), V],
        439 | 452 => &[Fd, Path, V, V],
        451 => &[Fd, In(Const(16)), Out(Const(32)), V],
        _ => return None,
    })
}

/// Socket options whose value the kernel reads or writes as plain bytes,
/// never more than the option length says, with no pointer or fd inside: only
/// these are forwarded by getsockopt and setsockopt. Anything else (SO_GET_FILTER
/// counts its length in 8-byte blocks; SO_ATTACH_FILTER and
/// TCP_ZEROCOPY_RECEIVE carry pointers into the process; SO_PEERPIDFD makes an
/// fd; netfilter's tables) runs at home, where the kernel sees the process's
/// own memory.
pub fn sockopt_plain(level: u64, opt: u64) -> bool {
    const SOL_SOCKET: u64 = 1;
    const IPPROTO_IP: u64 = 0;
    const IPPROTO_TCP: u64 = 6;
    const IPPROTO_UDP: u64 = 17;
    const IPPROTO_IPV6: u64 = 41;
    match level {
        // All but 26 (SO_ATTACH_FILTER = SO_GET_FILTER), 50-52 (BPF and
        // reuseport programs), 76-77 (pidfds), and numbers this table does not know.
        SOL_SOCKET => matches!(opt, 1..=25 | 27..=49 | 53..=75),
        // 0-26: TOS, TTL, options, pktinfo, MTU discovery, recverr, freebind,
        // transparent, bind-address-no-port...; 32-40: multicast ones with flat
        // structs. Not 41+ (IP_MSFILTER and source filters), 64+ (netfilter).
        IPPROTO_IP => matches!(opt, 1..=26 | 32..=40 | 49..=51),
        // All but 35 (TCP_ZEROCOPY_RECEIVE, pointers) and the TCP-AO keys (38+).
        IPPROTO_TCP => matches!(opt, 1..=34 | 36 | 37),
        IPPROTO_UDP => matches!(opt, 1 | 100..=104),
        // Hop limits, multicast, v6only, pktinfo, tclass, MTU, recverr...; not
        // 48 (MCAST_MSFILTER) and the group-filter numbers 42-47.
        IPPROTO_IPV6 => matches!(opt, 1..=5 | 7..=41 | 49..=80),
        _ => false,
    }
}

/// For a forwarded getsockopt (55) or setsockopt (54): the size of one unit
/// of the option length, in bytes (1 for plain options; 8 for SO_GET_FILTER,
/// whose length counts filter blocks), or None when the call must run at home.
pub fn sockopt_unit(nr: u32, level: u64, opt: u64) -> Option<usize> {
    if nr as i64 == libc::SYS_getsockopt && level == libc::SOL_SOCKET as u64 && opt == libc::SO_ATTACH_FILTER as u64 {
        return Some(8);
    }
    sockopt_plain(level, opt).then_some(1)
}

/// Size of the buffer an ioctl request reads or writes, and its direction
/// (true: the kernel writes it). None: unknown request, the process goes home.
pub fn ioctl_spec(req: u64) -> Option<(usize, bool)> {
    Some(match req {
        0x5401 => (36, true),                   // TCGETS
        0x5402..=0x5404 => (36, false),         // TCSETS, TCSETSW, TCSETSF
        0x540f | 0x5429 => (4, true),           // TIOCGPGRP, TIOCGSID (answered from home's view)
        0x5413 => (8, true),                    // TIOCGWINSZ
        0x5414 => (8, false),                   // TIOCSWINSZ
        0x541b => (4, true),                    // FIONREAD
        0x5421 => (4, false),                   // FIONBIO
        0x5452 => (4, false),                   // FIOASYNC
        0x5450 | 0x5451 => (0, false),          // FIONCLEX, FIOCLEX
        0x540b => (0, false),                   // TCFLSH (value argument)
        0x5409 | 0x540a => (0, false),          // TCSBRK, TCXONC (value argument)
        0x802c542a => (44, true),               // TCGETS2
        0x402c542b..=0x402c542d => (44, false), // TCSETS2 family
        _ => return None,
    })
}

/// How one argument's buffer is sized, in words.
fn describe_len(l: Len) -> String {
    match l {
        Const(n) => format!("{n} bytes"),
        Val(j) => format!("argument {j} bytes (at most 8 MiB)"),
        ArgMul(j, k) => format!("argument {j} x {k} bytes"),
        DerefU32(j) => format!("the socklen argument {j} points to, in bytes (only what the kernel wrote comes back)"),
        FdSet(j) => format!("an fd_set for nfds = argument {j}"),
    }
}

/// The rule that sizes a forwarded call's buffers (both the supervisor and
/// the deputy follow it), in words; None for calls that are not forwarded.
/// Every buffer travels as the prefix the guest can supply or take and lies
/// against a guard page at home (see `marshal`).
pub fn sizing(nr: u32) -> Option<String> {
    let special = match nr {
        16 => "only requests of known layout (`ioctl_spec`): TCGETS/TCSETS* 36 bytes, TCGETS2/TCSETS2* 44, TIOCGWINSZ/TIOCSWINSZ 8, FIONREAD/FIONBIO/FIOASYNC/TIOCGPGRP/TIOCGSID 4, value requests none; any other request goes home",
        19 | 20 | 295 | 296 => "the iovec array (argument 2 entries, at most 1024) is gathered into one buffer of at most 8 MiB; a short count as POSIX allows",
        46 => "msghdr (56 bytes) read; name up to 128 bytes, control up to 64 KiB, data gathered from at most 1024 iovecs; SCM_RIGHTS may not name om's own fds",
        47 => "msghdr (56 bytes) read; name up to 128 bytes, control up to 64 KiB (the guest's bytes go in and come back around what the kernel wrote), data scattered to at most 1024 iovecs",
        54 => "options whose value is optlen plain bytes with no pointer or fd inside (`sockopt_plain`); others go home; value: argument 4 bytes",
        55 => "options the kernel writes as at most *optlen plain bytes (`sockopt_plain`), SO_GET_FILTER as *optlen 8-byte blocks; others go home; optlen 4 bytes in and out",
        62 | 200 | 234 => "no buffers (pids and signal numbers)",
        72 => "value commands only (F_DUPFD, F_GETFD/SETFD, F_GETFL/SETFL, F_SETOWN/GETOWN, F_SETSIG/GETSIG, leases, F_NOTIFY, F_DUPFD_CLOEXEC, pipe sizes, seals); locks and pointer commands go home",
        _ => "",
    };
    if !special.is_empty() {
        return Some(special.to_string());
    }
    if class(nr) != Forward {
        return None;
    }
    let sp = spec(nr)?;
    let parts: Vec<String> = sp
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            Some(match *a {
                V | Fd => return None,
                Path => format!("arg {i}: a path of at most 4096 bytes"),
                In(l) => format!("arg {i} in: {}", describe_len(l)),
                Out(l) => format!("arg {i} out: {}", describe_len(l)),
                OutRet(l) => format!("arg {i} out: {}, of which the result's count comes back", describe_len(l)),
                OutRetN(l, n) => format!("arg {i} out: {}, of which result x {n} bytes come back", describe_len(l)),
                InOut(l) => format!("arg {i} in and out: {}", describe_len(l)),
            })
        })
        .collect();
    Some(if parts.is_empty() { "no buffers".into() } else { parts.join("; ") })
}

/// The compatibility page: every call, how a moved process gets it served,
/// why, and how its buffers are sized (docs/SYSCALLS.md is this, generated).
/// How a kernel feature fares when its process moves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    /// Captured and rebuilt exactly wherever the process runs.
    Moves,
    /// Kept at home; the calls that use it are forwarded to the deputy.
    Forwarded,
    /// Answered by om as the kernel would at home.
    Emulated,
    /// The process goes home to use it.
    Home,
    /// om refuses to move a process that uses it, with the reason.
    Refused,
}

/// One kernel feature on the compatibility page: what happens to it, why,
/// and what checks it (`case NAME` is `fidelity/src/bin/NAME.rs`, run
/// natively, away and bounced; `test NAME` an end-to-end test).
pub struct Feature {
    pub name: &'static str,
    pub fate: Fate,
    pub why: &'static str,
    pub checked_by: &'static [&'static str],
}

use Fate::{Emulated as Emu, Forwarded as Fwd, Home as AtHome, Moves, Refused};

pub const FEATURES: &[Feature] = &[
    Feature { name: "private memory of every protection (PROT_NONE, write-only, exec-only), heap, stack", fate: Moves, why: "every page with content is read whatever its protection, written first and protected after", checked_by: &["test protected_memory_is_exact_natively_away_and_after_moves"] },
    Feature { name: "guard pages (MADV_GUARD_INSTALL)", fate: Moves, why: "recorded from pagemap and installed again last", checked_by: &["test guard_pages_move_with_the_process"] },
    Feature { name: "madvise and mlock attributes (DONTFORK, WIPEONFORK, HUGEPAGE, NOHUGEPAGE, DONTDUMP, mlock, MLOCK_ONFAULT)", fate: Moves, why: "read from smaps VmFlags, set again after the pages are written", checked_by: &["case madvise_flags"] },
    Feature { name: "mlockall(MCL_FUTURE)", fate: Moves, why: "seen in the VmFlags of the scratch area the capture maps; set again last", checked_by: &["case mlockall_future"] },
    Feature { name: "pages shared copy-on-write with its children", fate: Moves, why: "read without pinning (which would copy them); the placeholder keeps them while the process is away, and a return home writes only the pages that changed", checked_by: &["test pages_shared_with_a_child_stay_shared_after_a_move_out_and_back"] },
    Feature { name: "private mappings of files", fate: Moves, why: "mapped again from the same file (home's, or an identical one on the node), changed pages copied", checked_by: &["case private_file_map_linked"] },
    Feature { name: "private mappings of deleted files", fate: Refused, why: "the file cannot be mapped again, and anonymous memory would not see later writes through an fd", checked_by: &["case private_file_map"] },
    Feature { name: "shared anonymous memory, memfds and deleted tmpfs files mapped shared, used by this process alone", fate: Moves, why: "whether another process maps it or holds an fd on it is read from every process's maps and fds; the object is made again at the destination (same size, memfd name and seals, each region at its offset, one object for all the regions that map it), and every page holding data travels (tmpfs SEEK_DATA), touched by this process or not; a child forked later shares it. Made away, shared anonymous memory stays away", checked_by: &["case shared_sole", "case memfd_sealed", "test shared_anonymous_memory_made_away_is_shared_with_a_later_child"] },
    Feature { name: "SysV shared memory this process alone has attached", fate: Moves, why: "away it is shared memory made again, and every SysV call runs at home, where the placeholder keeps the segment attached so its key and id answer as before; the pages are written back into it on the way home", checked_by: &["case sysv_shm"] },
    Feature { name: "shared writable file mappings on a cluster-consistent path (om.toml consistent_paths) that no other process maps", fate: Moves, why: "written back at the capture and mapped shared from the same file at the destination", checked_by: &["test a_shared_writable_file_mapping_on_a_consistent_path_moves"] },
    Feature { name: "processes under om that share memory (a gang: shared anonymous memory, memfds, deleted tmpfs files, SysV segments)", fate: Moves, why: "omd finds the gang from every process's maps; one migrate of any member moves them all to one node, out, across and home: every member pre-copies, all freeze, then each is captured, and only the lowest pid mapping an object sends its pages; where they arrive the object is made once (in omd) and every member maps it, and none runs until all are rebuilt; any failure leaves all where they were. A member that must go home (a call, a fork, a wait) takes the gang with it. omctl ps shows gangs", checked_by: &["case shared_with_child", "test a_parent_and_child_sharing_a_counter_move_out_across_and_home_together"] },
    Feature { name: "fds on shared memory that moves (a memfd or deleted tmpfs file both mapped and open)", fate: AtHome, why: "the fds stay at home with the deputy; a call on one (but close), or passing it, takes the process (and its gang) home, where the memory goes back into the object the fds hold (found again by its inode in the deputies' fds)", checked_by: &["case memfd_fd_and_map"] },
    Feature { name: "shared memory a process not under om uses too (it maps it, holds an fd on it, or has the SysV segment attached); shared writable file mappings elsewhere", fate: Refused, why: "one object cannot stay shared across nodes; the refusal names the other process, the fd or the setting", checked_by: &["test memory_shared_with_a_process_not_under_om_is_refused_naming_it", "test shared_file_mappings_elsewhere_or_shared_with_another_are_refused", "test shared_memory_sysv_and_own_seccomp_are_refused_and_the_process_stays"] },
    Feature { name: "aio contexts (io_setup) and io_uring", fate: Refused, why: "their rings are memory the kernel shares with the process at home", checked_by: &["test shared_memory_sysv_and_own_seccomp_are_refused_and_the_process_stays"] },
    Feature { name: "packet socket rings (PACKET_RX_RING, PACKET_TX_RING)", fate: Refused, why: "the ring is kernel memory shared with the socket at home", checked_by: &["case packet_ring"] },
    Feature { name: "threads", fate: Moves, why: "every thread moves, frozen together, each with its registers, xstate, mask, own signals, rseq, robust list, sigaltstack, clear_child_tid and name; each gets a lane here and a deputy worker at home, so a call waiting at home holds up only its thread; tids are home's everywhere (gettid, tgkill, sched_*affinity, timers); each signal is queued by its own thread. a thread with credentials of its own keeps them (the deputy's worker for it takes them, the supervisor answers them). Starting or ending a thread away, and priority-inheritance futex calls, go home. Refused: a thread with credentials the deputy cannot take (the main thread is not root with CAP_SETUID and CAP_SETGID, or the thread has capabilities it lacks)", checked_by: &["test python_threads_and_xz_move_and_finish_as_natively", "test a_thread_with_its_own_credentials_keeps_them_away", "test node_and_java_move_and_finish_as_natively", "test threads_contending_on_mutexes_and_condvars_move_while_contended", "test pthread_kill_interrupts_a_read_waiting_at_home", "test a_signal_from_outside_to_one_thread_reaches_it_and_interrupts_its_read", "test a_process_whose_threads_differ_in_credentials_is_refused_and_keeps_running", "test sigio_owned_by_one_thread_reaches_it_away", "test four_busy_threads_are_four_cores_of_demand_at_home_and_away", "test timers_that_signal_a_thread_move_with_the_process", "test every_thread_is_frozen_and_captured_with_its_own_state_and_the_process_runs_on", "test threads_started_and_ended_during_a_freeze_are_all_found_and_none_is_lost", "test eight_threads_waiting_at_home_each_move_and_read_their_own_pipe", "test eight_c_threads_move_out_across_and_home_and_exit_as_natively", "test signals_away_reach_the_thread_the_kernel_would_pick", "test threads_started_and_ended_during_a_migration"] },
    Feature { name: "its own seccomp filter", fate: Refused, why: "the guest's filter is om's; the process's own cannot be stacked under it faithfully", checked_by: &["test shared_memory_sysv_and_own_seccomp_are_refused_and_the_process_stays"] },
    Feature { name: "memory, fd table or cwd shared with another process (clone without CLONE_THREAD)", fate: Refused, why: "the sharing cannot be kept across nodes", checked_by: &["case clone_files"] },
    Feature { name: "POSIX record locks (fcntl F_SETLK)", fate: Refused, why: "they belong to the process's fd table at home, which is closed while away: they would be dropped", checked_by: &["case record_locks"] },
    Feature { name: "open files, flock and OFD locks, file offsets", fate: Fwd, why: "the deputy holds the open files at home, with their locks and offsets", checked_by: &["test file_offset_survives_migrations"] },
    Feature { name: "working directory (also deleted, or one the node cannot reach)", fate: Fwd, why: "the deputy holds it at home; paths resolve there", checked_by: &["case cwd_deleted", "case cwd_private"] },
    Feature { name: "resource limits", fate: Moves, why: "read from /proc at the capture, set with prlimit at each rebuild", checked_by: &["case rlimits"] },
    Feature { name: "prctl settings (THP disable, child subreaper, timer slack, MCE kill, TSC)", fate: Moves, why: "read and set again by injected prctl calls", checked_by: &["case prctl"] },
    Feature { name: "prctl identity (dumpable, no_new_privs, keepcaps, securebits, parent-death signal)", fate: Emu, why: "the guest runs with no_new_privs and another uid: reads answer home's values, changes go home", checked_by: &["case prctl"] },
    Feature { name: "membarrier registrations", fate: Moves, why: "probed at the capture, registered again", checked_by: &["case membarrier"] },
    Feature { name: "nice, personality, I/O priority, CPU affinity", fate: Moves, why: "captured and set again", checked_by: &["case sched_attrs"] },
    Feature { name: "signal actions, mask and pending signals with their siginfo", fate: Moves, why: "pending signals are read whole (PTRACE_PEEKSIGINFO) and queued again by the process itself", checked_by: &["case queued_signals"] },
    Feature { name: "signals a process sends itself (kill, tkill, tgkill)", fate: Emu, why: "queued by the process to itself with its home pid and uid, before the call returns", checked_by: &["case signal_self_handler", "case signalfd_self"] },
    Feature { name: "signals from other processes", fate: Fwd, why: "caught at the placeholder at home and handed on with their siginfo", checked_by: &["case signal_from_parent"] },
    Feature { name: "alternate signal stack (sigaltstack)", fate: Moves, why: "captured and set again", checked_by: &["case sigaltstack"] },
    Feature { name: "interval timers and alarm", fate: Moves, why: "read and stopped in one call at the capture (so they cannot also fire at the source), armed again where the process runs", checked_by: &["test an_alarm_armed_at_home_fires_once_away"] },
    Feature { name: "POSIX timers (timer_create), SIGEV_THREAD_ID and glibc SIGEV_THREAD included", fate: Moves, why: "read and stopped at the capture, made again under their ids (PR_TIMER_CREATE_RESTORE_IDS), a thread's timer aimed at the same thread; made away, one that names a thread by tid is made at home. Refused: a timer on another thread's or process's CPU clock or an alarm clock, or one whose signal is pending when the process freezes (its overrun count could not be kept)", checked_by: &["case posix_timers", "test timers_that_signal_a_thread_move_with_the_process"] },
    Feature { name: "waits in sigwaitinfo during a move", fate: Moves, why: "the freeze's ptrace stop cuts the wait short (EINTR); with no signal pending that would have, the wait is rewound and waits on", checked_by: &["case sigwaitinfo_wait"] },
    Feature { name: "its own /proc files (/proc/self, /proc/PID)", fate: AtHome, why: "only home has the process's own pid, status and maps", checked_by: &["case proc_self"] },
    Feature { name: "/dev/tty", fate: AtHome, why: "it is the controlling terminal of whoever opens it: only the process itself, at home", checked_by: &["case dev_tty"] },
    Feature { name: "terminal hangup (SIGHUP when the terminal closes)", fate: Fwd, why: "the kernel signals the placeholder, which hands it on", checked_by: &["case tty_hangup"] },
    Feature { name: "job control on the controlling terminal (SIGTTIN, SIGTTOU, EIO, tcgetpgrp)", fate: Emu, why: "the deputy checks the terminal's foreground group; the supervisor signals or fails the call as the kernel would", checked_by: &["case tty_background", "test ctrl_z_stops_a_migrated_process_and_fg_resumes_it"] },
    Feature { name: "writes to stream sockets and pipes", fate: Fwd, why: "run at home; one that fits the room home reported goes behind (answered at once, run in order)", checked_by: &["case stream_writes", "test small_writes_just_before_an_exit_all_arrive"] },
    Feature { name: "reads of stream sockets and pipes", fate: Fwd, why: "run at home; where only this process reads the fd, what follows is peeked (left in the stream) and the next reads are answered from it", checked_by: &["case stream_reads"] },
];

/// The compatibility page's table of kernel features.
fn features_table() -> String {
    let mut s = String::from(
        "## Kernel features\n\n\
         - **moves**: captured and rebuilt exactly wherever the process runs.\n\
         - **forwarded**: kept at home; the calls that use it run in the deputy.\n\
         - **emulated**: om answers as the kernel would at home.\n\
         - **home**: the process goes home to use it.\n\
         - **refused**: om does not move a process that uses it, and says why (`omctl migrate`, `omctl ps`).\n\n\
         Checked by: a `case` runs natively, away and after 2 -> 3 -> home and must behave the same \
         (`fidelity/src/bin/`); a `test` is an end-to-end test in `tests/tests/`.\n\n\
         | feature | fate | why | checked by |\n| --- | --- | --- | --- |\n",
    );
    for f in FEATURES {
        let fate = match f.fate {
            Fate::Moves => "moves",
            Fate::Forwarded => "forwarded",
            Fate::Emulated => "emulated",
            Fate::Home => "home",
            Fate::Refused => "**refused**",
        };
        let by: Vec<String> = f.checked_by.iter().map(|c| format!("`{c}`")).collect();
        s.push_str(&format!("| {} | {fate} | {} | {} |\n", f.name, f.why, by.join(", ")));
    }
    s
}

pub fn compat_page() -> String {
    let mut s = String::from(
        "# What moves: kernel features and system calls of a moved process\n\nGenerated from `runtime/src/syscalls.rs` (`cargo test -p om-runtime compat_page` checks it; `OM_REGEN=1` rewrites it).\n\n\
         - **local**: the kernel of the node that runs the process serves it, untrapped.\n\
         - **emulated**: om answers it there (identity calls answer the home values).\n\
         - **forwarded**: it runs at home, in the process's deputy, with the process's credentials and fds; buffers are sized as the last column says.\n\
         - **home**: the process goes home and the call runs there, natively.\n\n\
         | nr | call | served | why | buffers |\n| --- | --- | --- | --- | --- |\n",
    );
    let calls_at = s.find("- **local**").unwrap_or(s.len());
    s.insert_str(calls_at, &(features_table() + "\n## System calls\n\n"));
    for e in TABLE {
        let class = match e.class {
            Local => "local",
            Emulated => "emulated",
            Forward => "forwarded",
            Home => "home",
        };
        let sizing = if e.class == Forward { sizing(e.nr).unwrap_or_default() } else { String::new() };
        s.push_str(&format!("| {} | {} | {class} | {} | {} |\n", e.nr, e.name, e.note, sizing));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sorted_unique_and_noted() {
        for w in TABLE.windows(2) {
            assert!(w[0].nr < w[1].nr, "{} before {}", w[0].name, w[1].name);
        }
        assert!(TABLE.iter().all(|e| !e.note.is_empty()));
        assert!(TABLE.len() > 370);
    }

    #[test]
    fn every_forwarded_call_can_be_marshalled() {
        let special = [16, 19, 20, 46, 47, 62, 72, 200, 234, 295, 296];
        for e in TABLE.iter().filter(|e| e.class == Forward) {
            assert!(spec(e.nr).is_some() || special.contains(&e.nr), "{} has no marshalling", e.name);
        }
    }

    #[test]
    fn every_forwarded_call_has_a_sizing_rule() {
        for e in TABLE.iter().filter(|e| e.class == Forward) {
            assert!(sizing(e.nr).is_some_and(|s| !s.is_empty()), "{} has no sizing rule", e.name);
        }
    }

    #[test]
    fn compat_page_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SYSCALLS.md");
        let page = compat_page();
        if std::env::var_os("OM_REGEN").is_some() {
            std::fs::write(&path, &page).expect("write docs/SYSCALLS.md");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == page, "docs/SYSCALLS.md is out of date: run OM_REGEN=1 cargo test -p om-runtime compat_page");
    }

    /// Every fidelity case and end-to-end test the feature table names
    /// exists, every fidelity case is named, and a case of a refused feature
    /// (only) says `refused`.
    #[test]
    fn feature_table_matches_the_checks() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cases_dir = root.join("fidelity/src/bin");
        let tests: String = std::fs::read_dir(root.join("tests/tests"))
            .expect("tests/tests")
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        let mut named = std::collections::HashSet::new();
        for f in FEATURES {
            for c in f.checked_by {
                if let Some(case) = c.strip_prefix("case ") {
                    let src = std::fs::read_to_string(cases_dir.join(format!("{case}.rs")))
                        .unwrap_or_else(|_| panic!("{}: no fidelity case {case}", f.name));
                    let refused = src.lines().take(5).any(|l| l.trim() == "//! fidelity: refused");
                    assert_eq!(
                        refused,
                        f.fate == Fate::Refused,
                        "{}: case {case} and the table disagree on refusal",
                        f.name
                    );
                    named.insert(case.to_string());
                } else if let Some(test) = c.strip_prefix("test ") {
                    assert!(tests.contains(&format!("fn {test}(")), "{}: no test {test}", f.name);
                } else {
                    panic!("{}: {c} is neither a case nor a test", f.name);
                }
            }
        }
        for e in std::fs::read_dir(&cases_dir).expect("cases").flatten() {
            let name = e.path().file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            assert!(named.contains(&name), "fidelity case {name} is on no row of FEATURES");
        }
    }

    #[test]
    fn classes() {
        assert_eq!(class(0), Forward);
        assert_eq!(class(57), Home);
        assert_eq!(class(39), Emulated);
        assert_eq!(class(228), Local);
        assert_eq!(class(9999), Home);
        assert_eq!(name(257), "openat");
    }
}
