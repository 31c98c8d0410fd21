#!/bin/sh
# pybpf VM harness: PID 1 in the guest after switch_root (the host's /bin/sh).
# The init left the command's channels open: fd 3 = stdout (hvc0), fd 4 =
# stderr (hvc1), fd 5 = control (hvc2). Runs /run/pybpf/cmd.sh, reports
# "START" and "EXIT <status>" on the control channel, then resets the
# machine (QEMU runs with -no-reboot, so it exits).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo START >&5
/bin/sh /run/pybpf/cmd.sh </dev/null >&3 2>&4 3>&- 4>&- 5>&-
status=$?
sync
echo "EXIT $status" >&5
echo b > /proc/sysrq-trigger
sleep 60
