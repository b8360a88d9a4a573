-- id: phi-bulk-read
-- title: A user opened more than 200 PHI files in 15 minutes, far above their usual for this hour
-- severity: high
-- hipaa: 164.312(b)
-- mitre: T1005, T1119
-- version: 2
-- window: 15m
SELECT *
FROM events
WHERE is_phi
  AND kind = 'open'
  AND errno = 0
  AND user_phi_opens_15m > 200
  AND user_z_phi_files > 5
