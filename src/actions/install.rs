//! The `install` action: `.deb`/`.rpm` files, local or fetched over
//! http(s), installed inside the tree by its own `dpkg -i` / `rpm -Uvh` in
//! the sandbox. The package files are copied in for the run and removed, so
//! only what the package manager wrote stays in the layer.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::run::RunContext;
use crate::sandbox::scratch::{self, Scratch, ScratchError};
use crate::sandbox::{self, Output, RunOptions, SandboxError};
use crate::spec::Package;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{package}: not a .deb or .rpm file")]
    UnknownKind { package: String },
    #[error("cannot create a download directory")]
    TempDir {
        #[source]
        source: io::Error,
    },
    #[error("downloading {url}")]
    Download {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url} gave {got}, not a .deb or .rpm package")]
    NotAPackage { url: String, got: String },
    #[error("downloading {url}: interrupted")]
    Interrupted { url: String },
    #[error("downloading {url} to {}", .path.display())]
    Transfer {
        url: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy {} into the tree", .path.display())]
    CopyIn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("install")]
    Scratch {
        #[source]
        source: ScratchError,
    },
    #[error(
        "install: the image is {platform} and this machine cannot run its programs ({message})"
    )]
    Foreign { platform: String, message: String },
    #[error("install needs {program}, which the image does not have")]
    NoManager { program: String },
    #[error("install")]
    Sandbox {
        #[source]
        source: SandboxError,
    },
    #[error("`{command}` failed: {status}")]
    Failed { command: String, status: String },
    #[error("{error}; cleaning up afterwards failed too: {cleanup}")]
    AndCleanup {
        error: Box<InstallError>,
        cleanup: ScratchError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deb,
    Rpm,
}

impl Kind {
    /// The kind a package file's first bytes show: an `ar` archive starting
    /// with `debian-binary`, or the RPM lead's magic.
    fn of_content(head: &[u8]) -> Option<Kind> {
        if head.starts_with(b"!<arch>\ndebian-binary") {
            Some(Kind::Deb)
        } else if head.starts_with(&[0xed, 0xab, 0xee, 0xdb]) {
            Some(Kind::Rpm)
        } else {
            None
        }
    }

    fn of(name: &str) -> Option<Kind> {
        if name.ends_with(".deb") {
            Some(Kind::Deb)
        } else if name.ends_with(".rpm") {
            Some(Kind::Rpm)
        } else {
            None
        }
    }

    /// The package manager's command line, before the files.
    fn command(self) -> [&'static str; 2] {
        match self {
            Kind::Deb => ["dpkg", "-i"],
            Kind::Rpm => ["rpm", "-Uvh"],
        }
    }
}

/// A package file on the host, ready to be copied in.
struct Local {
    kind: Kind,
    host: PathBuf,
    name: String,
}

/// The file name a URL ends with (no query or fragment).
fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    match path.split_once('/') {
        Some((_, rest)) => rest.rsplit('/').next().unwrap_or(""),
        None => "",
    }
}

/// Install `packages` into `tree`: every `.deb` with one `dpkg -i`, then
/// every `.rpm` with one `rpm -Uvh`.
pub fn install(tree: &Path, packages: &[Package], ctx: &RunContext) -> Result<(), InstallError> {
    if packages.is_empty() {
        return Ok(());
    }
    let target = ctx.target.to_string();
    // Downloads land on the host first, so a failed fetch never touches the tree.
    let downloads = tempfile::Builder::new()
        .prefix("genoci-download-")
        .tempdir()
        .map_err(|source| InstallError::TempDir { source })?;
    let mut locals = Vec::new();
    for (index, package) in packages.iter().enumerate() {
        let local = match package {
            Package::File(path) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let kind = Kind::of(&name).ok_or_else(|| InstallError::UnknownKind {
                    package: path.display().to_string(),
                })?;
                Local {
                    kind,
                    host: path.clone(),
                    name: format!("{index}-{name}"),
                }
            }
            Package::Url(url) => {
                let path = downloads.path().join(format!("{index}.download"));
                download(&target, url, &path, index)?
            }
        };
        locals.push(local);
    }

    let mut scratch = Scratch::new(&scratch::scratch_dir(tree))
        .map_err(|source| InstallError::Scratch { source })?;
    let result = install_copies(tree, &mut scratch, &locals, ctx);
    match (result, scratch.remove()) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(source)) => Err(InstallError::Scratch { source }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => Err(InstallError::AndCleanup {
            error: Box::new(e),
            cleanup,
        }),
    }
}

/// Download `url` to `path` and check that a package came: its kind from
/// its first bytes, whatever the URL looks like.
fn download(target: &str, url: &str, path: &Path, index: usize) -> Result<Local, InstallError> {
    let content_type = fetch(target, url, path, Timeouts::DEFAULT)?;
    let head = file_head(path).map_err(|source| InstallError::Transfer {
        url: url.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let kind = Kind::of_content(&head).ok_or_else(|| InstallError::NotAPackage {
        url: url.to_string(),
        got: describe_content(content_type.as_deref(), &head),
    })?;
    let name = match url_file_name(url) {
        name if Kind::of(name) == Some(kind) => name.to_string(),
        _ => format!("package.{}", if kind == Kind::Deb { "deb" } else { "rpm" }),
    };
    Ok(Local {
        kind,
        host: path.to_path_buf(),
        name: format!("{index}-{name}"),
    })
}

fn file_head(path: &Path) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    File::open(path)?.take(64).read_to_end(&mut head)?;
    Ok(head)
}

/// What a download that is no package holds, for the message: its type as
/// the server said and its first bytes.
fn describe_content(content_type: Option<&str>, head: &[u8]) -> String {
    let kind = content_type.unwrap_or("no Content-Type");
    if head.is_empty() {
        return format!("an empty body ({kind})");
    }
    let text: String = String::from_utf8_lossy(&head[..head.len().min(32)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{kind} starting `{}`", text.trim())
}

/// How long a download may wait: to connect, and for each read (a server
/// that accepts and never answers must not hang the build).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    read: Duration,
}

impl Timeouts {
    const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(30),
        read: Duration::from_secs(60),
    };
}

/// Fetch `url` into a new file at `path`; the response's Content-Type. The
/// transfer runs on its own thread so that Ctrl-C or SIGTERM stop the wait
/// at once, as they stop every other step: the thread is left to its
/// timeouts, writing only into a file the caller's temp dir removal
/// unlinks.
fn fetch(
    target: &str,
    url: &str,
    path: &Path,
    timeouts: Timeouts,
) -> Result<Option<String>, InstallError> {
    tracing::info!(target = %target, url = %url, "download");
    let transfer_error = |source| InstallError::Transfer {
        url: url.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(transfer_error)?;
    let owned_url = url.to_string();
    let transfer = std::thread::Builder::new()
        .name("download".into())
        .spawn(move || transfer(&owned_url, file, timeouts))
        .map_err(transfer_error)?;
    while !transfer.is_finished() {
        if crate::signals::interrupted() {
            return Err(InstallError::Interrupted {
                url: url.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match transfer.join() {
        Ok(Ok(content_type)) => Ok(content_type),
        Ok(Err(Failure::Http(source))) => Err(InstallError::Download {
            url: url.to_string(),
            source: Box::new(source),
        }),
        Ok(Err(Failure::Io(source))) => Err(transfer_error(source)),
        Err(_) => Err(transfer_error(io::Error::other(
            "the download thread panicked",
        ))),
    }
}

enum Failure {
    Http(ureq::Error),
    Io(io::Error),
}

fn transfer(url: &str, mut file: File, timeouts: Timeouts) -> Result<Option<String>, Failure> {
    let agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(timeouts.connect))
        .timeout_connect(Some(timeouts.connect))
        .timeout_per_read(Some(timeouts.read))
        // A redirect must not downgrade an https URL the user gave to http.
        .https_only(url.starts_with("https://"))
        .build()
        .new_agent();
    let response = agent.get(url).call().map_err(Failure::Http)?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = response.into_body().into_reader();
    // A body that stops mid-way reports the read timeout as an io::Error.
    io::copy(&mut body, &mut file).map_err(Failure::Io)?;
    file.sync_all().map_err(Failure::Io)?;
    Ok(content_type)
}

fn install_copies(
    tree: &Path,
    scratch: &mut Scratch,
    locals: &[Local],
    ctx: &RunContext,
) -> Result<(), InstallError> {
    let dir = scratch
        .add_tree(&scratch::unique_name("install"))
        .map_err(|source| InstallError::Scratch { source })?;
    let mut copies = Vec::new();
    for local in locals {
        let dest = dir.join(&local.name);
        copy_new(&local.host, &dest).map_err(|source| InstallError::CopyIn {
            path: local.host.clone(),
            source,
        })?;
        copies.push((local.kind, scratch::path_in_tree(tree, &dest)));
    }

    for kind in [Kind::Deb, Kind::Rpm] {
        let files: Vec<String> = copies
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, path)| path.clone())
            .collect();
        if files.is_empty() {
            continue;
        }
        let mut argv: Vec<String> = kind.command().iter().map(|s| s.to_string()).collect();
        argv.extend(files);
        let command = kind.command().join(" ");
        tracing::info!(target = %ctx.target, command = %command, "install");
        let status = sandbox::run(&RunOptions {
            root: tree,
            argv,
            env: ctx.env.clone(),
            workdir: "/".into(),
            network: ctx.network,
            output: Output::Prefixed(ctx.target.to_string()),
            privileged: ctx.privileged,
            user: None,
            tree: ctx.tree,
        })
        .map_err(|source| match source {
            SandboxError::NotFound { program, .. } => InstallError::NoManager { program },
            SandboxError::Exec { message, .. } if ctx.foreign.is_some() => InstallError::Foreign {
                platform: ctx.foreign.clone().unwrap_or_default(),
                message,
            },
            source => InstallError::Sandbox { source },
        })?;
        if !status.success() {
            return Err(InstallError::Failed {
                command,
                status: sandbox::describe_status(status),
            });
        }
    }
    Ok(())
}

/// Copy a host file to a path that must not exist yet.
fn copy_new(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut dest = OpenOptions::new().write(true).create_new(true).open(to)?;
    io::copy(&mut source, &mut dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::tests::{busybox_tree, mounts_under};
    use crate::sandbox::Network;
    use std::fs;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    fn ctx() -> RunContext<'static> {
        RunContext {
            target: "pkgs",
            env: vec![],
            workdir: "/".into(),
            network: Network::Host,
            privileged: false,
            user: String::new(),
            foreign: None,
            tree: None,
        }
    }

    /// A tiny `.deb` holding `/usr/share/hello/hi.txt`, built with dpkg-deb.
    fn hello_deb(dir: &Path) -> Option<PathBuf> {
        let root = dir.join("pkg");
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::create_dir_all(root.join("usr/share/hello")).unwrap();
        fs::write(
            root.join("DEBIAN/control"),
            "Package: hello-genoci\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: Test <test@example.org>\nDescription: test package\n",
        )
        .unwrap();
        fs::write(root.join("usr/share/hello/hi.txt"), "hi\n").unwrap();
        let deb = dir.join("hello_1.0_all.deb");
        let built = std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&root)
            .arg(&deb)
            .output();
        match built {
            Ok(out) if out.status.success() => Some(deb),
            _ => {
                crate::test_support::skip("dpkg-deb is not available");
                None
            }
        }
    }

    /// A busybox tree whose busybox `dpkg` applet can install packages.
    fn dpkg_tree() -> Option<(tempfile::TempDir, PathBuf)> {
        let (tmp, tree) = busybox_tree()?;
        fs::create_dir_all(tree.join("var/lib/dpkg/info")).unwrap();
        fs::write(tree.join("var/lib/dpkg/status"), "").unwrap();
        Some((tmp, tree))
    }

    /// Serve `body` with `status` to one request; the URL to ask.
    fn serve_once(status: &'static str, body: Vec<u8>, name: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/pool/{name}?x=1", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        });
        url
    }

    #[test]
    fn package_kinds_by_content() {
        assert_eq!(
            Kind::of_content(b"!<arch>\ndebian-binary   1342"),
            Some(Kind::Deb)
        );
        assert_eq!(
            Kind::of_content(&[0xed, 0xab, 0xee, 0xdb, 3]),
            Some(Kind::Rpm)
        );
        assert_eq!(Kind::of_content(b"<!DOCTYPE html>"), None);
        assert_eq!(
            describe_content(Some("text/html"), b"<!DOCTYPE html>\n<html>"),
            "text/html starting `<!DOCTYPE html> <html>`"
        );
        assert_eq!(
            describe_content(None, b""),
            "an empty body (no Content-Type)"
        );
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x.deb", listener.local_addr().unwrap());
        // Accepts, then holds the connection open without a word.
        let server = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
        let tmp = tempfile::tempdir().unwrap();
        let short = Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_millis(300),
        };
        let start = std::time::Instant::now();
        let err = fetch("pkgs", &url, &tmp.path().join("x"), short).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let message = crate::error_chain(&err);
        assert!(
            message.contains(&url) && message.contains("imeout"),
            "{message}"
        );
        drop(server.join());
    }

    #[test]
    fn a_web_page_is_no_package() {
        let Some((_tmp, tree)) = dpkg_tree() else {
            return;
        };
        let url = serve_once("200 OK", b"<html>login</html>".to_vec(), "hello.deb");
        let err = install(&tree, &[Package::Url(url.clone())], &ctx()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{url} gave no Content-Type starting `<html>login</html>`, not a .deb or .rpm package")
        );
    }

    #[test]
    fn file_names_of_urls() {
        assert_eq!(url_file_name("https://h/a/b/x_1.deb?sig=2#f"), "x_1.deb");
        assert_eq!(url_file_name("http://host"), "");
        assert_eq!(url_file_name("http://host/"), "");
    }

    #[test]
    fn a_local_deb_is_installed_and_its_copy_removed() {
        let Some((tmp, tree)) = dpkg_tree() else {
            return;
        };
        let Some(deb) = hello_deb(tmp.path()) else {
            return;
        };
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(tree.join("tmp"), old, old).unwrap();
        install(&tree, &[Package::File(deb)], &ctx()).unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("usr/share/hello/hi.txt")).unwrap(),
            "hi\n"
        );
        let status = fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap();
        assert!(status.contains("Package: hello-genoci"), "{status}");
        assert_eq!(fs::read_dir(tree.join("tmp")).unwrap().count(), 0);
        assert_eq!(
            scratch::mtime_ns(&tree.join("tmp")).unwrap(),
            1_000_000_000_000_000
        );
        assert!(mounts_under(tmp.path()).is_empty());
    }

    #[test]
    fn a_deb_is_fetched_over_http() {
        let Some((tmp, tree)) = dpkg_tree() else {
            return;
        };
        let Some(deb) = hello_deb(tmp.path()) else {
            return;
        };
        let url = serve_once("200 OK", fs::read(deb).unwrap(), "hello_1.0_all.deb");
        install(&tree, &[Package::Url(url)], &ctx()).unwrap();
        assert!(tree.join("usr/share/hello/hi.txt").exists());
    }

    #[test]
    fn a_failed_download_names_the_url_and_leaves_the_tree_alone() {
        let Some((_tmp, tree)) = dpkg_tree() else {
            return;
        };
        let url = serve_once("404 Not Found", b"gone".to_vec(), "missing.deb");
        let err = install(&tree, &[Package::Url(url.clone())], &ctx()).unwrap_err();
        let message = crate::error_chain(&err);
        assert!(
            message.contains(&url) && message.contains("404"),
            "{message}"
        );
        assert_eq!(fs::read_dir(tree.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_failing_manager_reports_its_status() {
        let Some((tmp, tree)) = dpkg_tree() else {
            return;
        };
        let rpm = tmp.path().join("broken.rpm");
        fs::write(&rpm, "not an rpm").unwrap();
        let err = install(&tree, &[Package::File(rpm)], &ctx()).unwrap_err();
        assert!(
            matches!(&err, InstallError::Failed { command, .. } if command == "rpm -Uvh"),
            "{err}"
        );
        assert!(err.to_string().contains("exit status"), "{err}");
        assert_eq!(fs::read_dir(tree.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_manager_is_named() {
        let Some((tmp, tree)) = dpkg_tree() else {
            return;
        };
        let Some(deb) = hello_deb(tmp.path()) else {
            return;
        };
        fs::remove_file(tree.join("bin/dpkg")).unwrap();
        let err = install(&tree, &[Package::File(deb)], &ctx()).unwrap_err();
        assert!(
            matches!(&err, InstallError::NoManager { program, .. } if program == "dpkg"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = install(
            tmp.path(),
            &[Package::File(tmp.path().join("x.tar"))],
            &ctx(),
        )
        .unwrap_err();
        assert!(matches!(err, InstallError::UnknownKind { .. }), "{err}");
    }
}
