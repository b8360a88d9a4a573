//! Role membership: which role a principal belongs to, from a TOML mapping
//! file that is reloaded when it changes.
//!
//! ```toml
//! default = "unassigned"          # role of principals not listed (optional)
//!
//! [users]                         # principal -> role
//! alice = "physician"
//! "998@ehr-01" = "backup-service"
//!
//! [gids]                          # numeric group id -> role
//! 1005 = "billing"
//! ```
//!
//! A user entry wins over a group entry. A mapping that fails to load on
//! reload is reported and the previous one stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::{Error, Result};

/// Role of principals the mapping does not name.
pub const DEFAULT_ROLE: &str = "unassigned";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    default: Option<String>,
    #[serde(default)]
    users: HashMap<String, String>,
    #[serde(default)]
    gids: HashMap<String, String>,
}

/// The mapping in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleMap {
    default: Option<String>,
    users: HashMap<String, String>,
    gids: HashMap<i64, String>,
}

impl RoleMap {
    /// Parses a mapping; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RoleMap> {
        let file: RolesFile = toml::from_str(text).map_err(|e| Error::Config {
            what: origin.to_owned(),
            reason: e.to_string(),
        })?;
        let mut gids = HashMap::new();
        for (gid, role) in file.gids {
            let parsed = gid.parse::<i64>().map_err(|_| Error::Config {
                what: origin.to_owned(),
                reason: format!("[gids] key `{gid}` is not a numeric group id"),
            })?;
            gids.insert(parsed, role);
        }
        Ok(RoleMap {
            default: file.default,
            users: file.users,
            gids,
        })
    }

    /// The role of a principal with primary group `gid`.
    pub fn role_of(&self, principal: &str, gid: i64) -> &str {
        self.users
            .get(principal)
            .or_else(|| self.gids.get(&gid))
            .or(self.default.as_ref())
            .map_or(DEFAULT_ROLE, String::as_str)
    }
}

/// A [`RoleMap`] backed by a file, reloaded when its modification time
/// changes.
#[derive(Debug)]
pub struct RoleFile {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
    map: RoleMap,
}

impl RoleFile {
    /// Loads the file; `None` means every principal has the default role.
    pub fn open(path: Option<&Path>) -> Result<RoleFile> {
        let mut file = RoleFile {
            path: path.map(Path::to_path_buf),
            modified: None,
            map: RoleMap::default(),
        };
        if let Some(path) = path {
            file.modified = modified(path);
            file.map = load(path)?;
        }
        Ok(file)
    }

    /// A fixed mapping, not backed by a file (for tests).
    pub fn with_map(map: RoleMap) -> RoleFile {
        RoleFile {
            path: None,
            modified: None,
            map,
        }
    }

    pub fn map(&self) -> &RoleMap {
        &self.map
    }

    /// Reloads when the file changed. Returns the error of a failed reload
    /// (the previous mapping stays in force), `Ok(true)` after a reload.
    pub fn reload_if_changed(&mut self) -> Result<bool> {
        let Some(path) = self.path.clone() else {
            return Ok(false);
        };
        let now = modified(&path);
        if now == self.modified {
            return Ok(false);
        }
        self.modified = now;
        self.map = load(&path)?;
        Ok(true)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(path: &Path) -> Result<RoleMap> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        what: path.display().to_string(),
        reason: format!("cannot read the role mapping: {e}"),
    })?;
    RoleMap::parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_in_deploy_parses() {
        let map = RoleMap::parse(
            include_str!("../../deploy/config/roles.toml"),
            "deploy/config/roles.toml",
        )
        .expect("deploy/config/roles.toml is valid");
        assert_eq!(map.role_of("998@ehr-db-01", 998), "backup-service");
        assert_eq!(map.role_of("drsmith", 5001), "physician");
        assert_eq!(map.role_of("newhire", 100), "unassigned");
    }

    const MAPPING: &str = r#"
default = "staff"
[users]
alice = "physician"
"998@ehr-01" = "backup-service"
[gids]
1005 = "billing"
"#;

    #[test]
    fn users_win_over_groups_and_default_covers_the_rest() {
        let map = RoleMap::parse(MAPPING, "roles.toml").expect("parses");
        assert_eq!(map.role_of("alice", 1005), "physician");
        assert_eq!(map.role_of("bob", 1005), "billing");
        assert_eq!(map.role_of("998@ehr-01", 998), "backup-service");
        assert_eq!(map.role_of("carol", 1), "staff");
        assert_eq!(RoleMap::default().role_of("carol", 1), DEFAULT_ROLE);
    }

    #[test]
    fn bad_mappings_say_where_and_why() {
        let err = RoleMap::parse("[users]\nalice = 3\n", "roles.toml").expect_err("not a string");
        assert!(err.to_string().contains("roles.toml"), "{err}");
        let err = RoleMap::parse("[gids]\nbilling = \"x\"\n", "roles.toml").expect_err("gid");
        assert!(err.to_string().contains("not a numeric group id"), "{err}");
        let err = RoleMap::parse("[usres]\n", "roles.toml").expect_err("typo");
        assert!(err.to_string().contains("usres"), "{err}");
    }

    #[test]
    fn a_failed_reload_keeps_the_previous_mapping() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("roles.toml");
        std::fs::write(&path, MAPPING).expect("write");
        let mut file = RoleFile::open(Some(&path)).expect("loads");
        assert_eq!(file.map().role_of("alice", 0), "physician");

        std::fs::write(&path, "[users]\nalice = \"nurse\"\n").expect("write");
        // Make sure the modification time moves even on coarse clocks.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        assert!(file.reload_if_changed().expect("reloads"));
        assert_eq!(file.map().role_of("alice", 0), "nurse");

        std::fs::write(&path, "[users\n").expect("write");
        let even_later = later + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(even_later))
            .expect("touch");
        assert!(file.reload_if_changed().is_err());
        assert_eq!(
            file.map().role_of("alice", 0),
            "nurse",
            "previous mapping stays"
        );
    }
}
