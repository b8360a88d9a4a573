-- id: db-service-shell
-- title: A database server started a shell
-- severity: critical
-- hipaa: 164.312(a)(1)
-- mitre: T1059.004, T1190
-- version: 1
SELECT *
FROM events
WHERE kind = 'exec'
  AND regexp_like(path, '/(sh|bash|dash|zsh|ksh|csh|tcsh)$')
  AND regexp_like(parent_exe, '/(postgres|mysqld|mariadbd|sqlservr|mongod|oracle)$')
