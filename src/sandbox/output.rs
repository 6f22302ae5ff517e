//! A child's stdout and stderr, each line shown as `[label] line` on
//! genoci's own stdout and stderr as it arrives, so that the output of
//! several targets and hooks can be told apart.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::Child;
use std::thread::JoinHandle;

/// Copy `reader` to `sink` line by line with a `[label] ` prefix. A write
/// error (genoci's stdout closed) does not stop the copy: the child must be
/// able to finish writing, whether or not anyone reads it.
pub fn forward_lines(reader: impl Read, label: &str, mut sink: impl Write) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut out = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        out.clear();
        out.extend_from_slice(b"[");
        out.extend_from_slice(label.as_bytes());
        out.extend_from_slice(b"] ");
        out.extend_from_slice(&line);
        out.push(b'\n');
        // One write per line, so lines of concurrent writers do not mix.
        let _ = sink.write_all(&out).and_then(|()| sink.flush());
    }
}

/// The threads forwarding a child's piped stdout and stderr.
pub struct Prefixer {
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Prefixer {
    /// Forward whatever of the child's stdout/stderr was piped.
    pub fn attach(child: &mut Child, label: &str) -> io::Result<Self> {
        let mut threads = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let label = label.to_string();
            threads.push(
                std::thread::Builder::new()
                    .name("stdout-forward".into())
                    .spawn(move || forward_lines(stdout, &label, io::stdout()))?,
            );
        }
        if let Some(stderr) = child.stderr.take() {
            let label = label.to_string();
            threads.push(
                std::thread::Builder::new()
                    .name("stderr-forward".into())
                    .spawn(move || forward_lines(stderr, &label, io::stderr()))?,
            );
        }
        Ok(Prefixer { threads })
    }

    /// Wait until both streams reach their end.
    pub fn finish(self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            let r = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("output thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_label() {
        let mut sink = Vec::new();
        forward_lines(&b"one\ntwo\r\n\nlast"[..], "web", &mut sink).unwrap();
        assert_eq!(
            String::from_utf8(sink).unwrap(),
            "[web] one\n[web] two\n[web] \n[web] last\n"
        );
    }
}
