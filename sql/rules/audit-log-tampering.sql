-- id: audit-log-tampering
-- title: Audit or system logs deleted, truncated or moved away
-- severity: critical
-- hipaa: 164.312(b)
-- mitre: T1070.002
-- version: 1
SELECT *
FROM events
WHERE kind IN ('unlink', 'truncate', 'rename')
  AND errno = 0
  AND (path LIKE '/var/log/%' OR path LIKE '%/audit/%')
