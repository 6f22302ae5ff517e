//! The user a command runs as, resolved the way docker (runc's
//! `GetExecUser`) resolves an image's `User`: `name`, `uid`, `name:group`
//! or `uid:gid`, looked up in the image's own `/etc/passwd` and
//! `/etc/group`.

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those listing the user by name, when no group
    /// was given (with a group given, none, as docker does).
    pub groups: Vec<u32>,
    /// From passwd; `/` for a uid it does not list.
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolve `spec` (an image's `User`; empty means root) against the
/// image's passwd and group files (empty text when absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, String> {
    let (user, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let numeric = user.parse::<u32>().ok();
    let entry = passwd_entries(passwd).find(|e| match numeric {
        Some(uid) => e.uid == uid,
        None => e.name == user,
    });
    let (uid, mut gid, home, name) = match (entry, numeric) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name)),
        (None, Some(uid)) => (uid, 0, "/".to_string(), None),
        (None, None) => return Err(format!("user {user:?} is not in the image's /etc/passwd")),
    };
    let mut groups = Vec::new();
    match group_arg {
        Some(g) if !g.is_empty() => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_entries(group)
                    .find(|(name, _, _)| *name == g)
                    .map(|(_, id, _)| id)
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
            };
        }
        _ => {
            if let Some(name) = name {
                groups = group_entries(group)
                    .filter(|(_, _, members)| members.contains(&name))
                    .map(|(_, id, _)| id)
                    .collect();
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        svc:x:999:998::/var/lib/svc:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,svc\napp:x:1000:\nsvc:x:998:\naudio:x:29:app\n";

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[rstest]
    #[case::empty_is_root("", user(0, 0, &[], "/root"))]
    #[case::name("app", user(1000, 1000, &[10, 29], "/home/app"))]
    #[case::uid_listed("1000", user(1000, 1000, &[10, 29], "/home/app"))]
    #[case::uid_unlisted("1234", user(1234, 0, &[], "/"))]
    #[case::uid_gid("1234:5678", user(1234, 5678, &[], "/"))]
    #[case::name_group("app:svc", user(1000, 998, &[], "/home/app"))]
    #[case::name_gid("svc:4", user(999, 4, &[], "/var/lib/svc"))]
    #[case::root_name("root", user(0, 0, &[], "/root"))]
    fn users_resolve_as_docker_does(#[case] spec: &str, #[case] want: ExecUser) {
        assert_eq!(resolve(spec, PASSWD, GROUP).unwrap(), want);
    }

    #[test]
    fn without_passwd_only_numbers_resolve() {
        assert_eq!(resolve("", "", "").unwrap(), user(0, 0, &[], "/"));
        assert_eq!(resolve("7:8", "", "").unwrap(), user(7, 8, &[], "/"));
        let err = resolve("app", "", "").unwrap_err();
        assert!(
            err.contains("\"app\" is not in the image's /etc/passwd"),
            "{err}"
        );
        let err = resolve("app:nogroup", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("group \"nogroup\""), "{err}");
    }
}
