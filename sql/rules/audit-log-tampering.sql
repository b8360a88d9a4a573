-- id: audit-log-tampering
-- title: Audit logs were deleted, truncated, emptied on open, moved away or overwritten by something other than log rotation
-- severity: critical
-- hipaa: 164.312(b)
-- mitre: T1070.002
-- version: 3
SELECT *
FROM events
WHERE errno = 0
  AND coalesce(exe, '') NOT IN ('/usr/sbin/auditd', '/usr/sbin/logrotate')
  AND (
    -- deleted, truncated or renamed away
    (kind IN ('unlink', 'truncate', 'rename')
      AND (path LIKE '/var/log/audit/%' OR path LIKE '%/audit/%'))
    -- opened with O_TRUNC (512), as `: > audit.log` and `cp /dev/null audit.log` do
    OR (kind = 'open' AND (flags & 512) <> 0
      AND (path LIKE '/var/log/audit/%' OR path LIKE '%/audit/%'))
    -- another file renamed over a log
    OR (kind = 'rename'
      AND (new_path LIKE '/var/log/audit/%' OR new_path LIKE '%/audit/%'))
  )
