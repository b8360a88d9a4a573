-- id: audit-log-tampering
-- title: Audit logs were deleted, truncated or moved away by something other than log rotation
-- severity: critical
-- hipaa: 164.312(b)
-- mitre: T1070.002
-- version: 2
SELECT *
FROM events
WHERE kind IN ('unlink', 'truncate', 'rename')
  AND errno = 0
  AND (path LIKE '/var/log/audit/%' OR path LIKE '%/audit/%')
  AND coalesce(exe, '') NOT IN ('/usr/sbin/auditd', '/usr/sbin/logrotate')
