#!/bin/sh
# Fill the ACL template (users.acl) with SHA-256 hashes of the Docker-secret passwords, then
# hand over to the image's entrypoint (which drops root). The plain passwords never reach a
# Redis file. (ACL files allow no comments, so the users are explained here.)
#
#   default    off: no anonymous access at all.
#   qt-app     the services: stream commands and the bus's Lua scripts, on qt:* keys only;
#              no admin and no dangerous commands (FLUSHALL, CONFIG, KEYS, DEBUG, MODULE...).
#   qt-backup  `quantum-trader backup`: an RDB snapshot over the replication protocol
#              (SYNC/REPLCONF) plus INFO / CONFIG GET to find the data files; cannot write.
#   qt-monitor redis_exporter (deploy/monitoring): INFO, SLOWLOG, LATENCY, stream lengths and
#              consumer-group lag on qt:* keys; cannot read values or write.
set -eu
hash() { tr -d '\r\n' < "$1" | sha256sum | cut -c1-64; }
app="/run/secrets/redis_app_password"
backup="/run/secrets/redis_backup_password"
monitor="/run/secrets/redis_monitor_password"
for f in "$app" "$backup" "$monitor"; do
  [ -s "$f" ] || { echo "missing secret $f" >&2; exit 1; }
done
umask 077
sed -e "s/__QT_APP_SHA256__/$(hash "$app")/" \
    -e "s/__QT_BACKUP_SHA256__/$(hash "$backup")/" \
    -e "s/__QT_MONITOR_SHA256__/$(hash "$monitor")/" \
    /etc/qt-redis/users.acl > /tmp/users.acl
chown redis:redis /tmp/users.acl 2>/dev/null || true
exec docker-entrypoint.sh redis-server /etc/qt-redis/redis.conf
