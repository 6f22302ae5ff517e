//! Platforms as OCI names them (`linux/arm64`, `linux/arm/v7`): this
//! machine's, and an image's.

use std::fmt;

use oci_spec::image::{Arch, ImageConfiguration, Os, Platform as OciPlatform};

/// An OS, a CPU architecture in Go's `GOARCH` names (which OCI uses), and
/// the architecture's variant where it has one that matters (`arm`'s v6/v7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: Os,
    pub architecture: Arch,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform genoci runs on, hence the one its `run` steps can execute.
    pub fn machine() -> Platform {
        let arm_variant = if cfg!(target_feature = "v7") {
            "v7"
        } else if cfg!(target_feature = "v6") {
            "v6"
        } else {
            "v5"
        };
        Platform::from_rust(
            std::env::consts::OS,
            std::env::consts::ARCH,
            cfg!(target_endian = "little"),
            arm_variant,
        )
    }

    /// Rust's names (`std::env::consts`) turned into OCI's.
    fn from_rust(os: &str, arch: &str, little_endian: bool, arm_variant: &str) -> Platform {
        let (goarch, variant) = match arch {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some(arm_variant)),
            "powerpc64" if little_endian => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "powerpc" => ("ppc", None),
            "mips" if little_endian => ("mipsle", None),
            "mips64" if little_endian => ("mips64le", None),
            "loongarch64" => ("loong64", None),
            "sparc64" => ("sparc64", None),
            // riscv64, s390x, mips, mips64: the same word in both.
            other => (other, None),
        };
        Platform {
            os: Os::from(os),
            architecture: Arch::from(goarch),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform an image config declares.
    pub fn of(config: &ImageConfiguration) -> Platform {
        Platform {
            os: config.os().clone(),
            architecture: config.architecture().clone(),
            variant: config.variant().clone(),
        }
    }

    /// Write this platform into an image config.
    pub fn set_on(&self, config: &mut ImageConfiguration) {
        config.set_os(self.os.clone());
        config.set_architecture(self.architecture.clone());
        config.set_variant(self.variant.clone());
    }

    /// The same, as an index descriptor's `platform`.
    pub fn to_oci(&self) -> OciPlatform {
        let mut p = OciPlatform::default();
        p.set_os(self.os.clone());
        p.set_architecture(self.architecture.clone());
        p.set_variant(self.variant.clone());
        p
    }

    /// Whether an index descriptor's platform is this one; a descriptor
    /// without a variant matches any variant.
    pub fn matches(&self, p: &OciPlatform) -> bool {
        *p.os() == self.os
            && *p.architecture() == self.architecture
            && p.variant()
                .as_ref()
                .is_none_or(|v| Some(v) == self.variant.as_ref())
    }

    /// Whether this machine can run programs built for `self`: same OS and
    /// architecture, and for 32-bit arm a variant no newer than the machine's.
    pub fn runs_here(&self) -> bool {
        let machine = Platform::machine();
        self.os == machine.os
            && self.architecture == machine.architecture
            && match (&self.variant, &machine.variant) {
                (Some(wanted), Some(have)) => wanted <= have,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_names_become_goarch_names() {
        let cases = [
            ("x86_64", true, "linux/amd64"),
            ("aarch64", true, "linux/arm64"),
            ("arm", true, "linux/arm/v7"),
            ("x86", true, "linux/386"),
            ("powerpc64", true, "linux/ppc64le"),
            ("powerpc64", false, "linux/ppc64"),
            ("s390x", false, "linux/s390x"),
            ("riscv64", true, "linux/riscv64"),
            ("loongarch64", true, "linux/loong64"),
            ("mips64", true, "linux/mips64le"),
        ];
        for (arch, little, want) in cases {
            let p = Platform::from_rust("linux", arch, little, "v7");
            assert_eq!(p.to_string(), want, "{arch}");
            assert!(!matches!(p.architecture, Arch::Other(_)), "{arch}");
        }
    }

    #[test]
    fn this_machine_is_named_as_uname_says() {
        let out = std::process::Command::new("uname")
            .arg("-m")
            .output()
            .unwrap();
        let uname = String::from_utf8(out.stdout).unwrap();
        let machine = Platform::machine();
        let want = match uname.trim() {
            "x86_64" => "linux/amd64",
            "aarch64" => "linux/arm64",
            "armv7l" => "linux/arm/v7",
            // No table for the rest: at least a name OCI knows.
            _ => return assert!(!matches!(machine.architecture, Arch::Other(_))),
        };
        assert_eq!(machine.to_string(), want);
        assert!(machine.runs_here());
        let other = if machine.architecture == Arch::Amd64 {
            "aarch64"
        } else {
            "x86_64"
        };
        assert!(!Platform::from_rust("linux", other, true, "v7").runs_here());
    }

    #[test]
    fn a_descriptor_without_variant_matches_any() {
        let v7 = Platform::from_rust("linux", "arm", true, "v7");
        let mut p = v7.to_oci();
        assert!(v7.matches(&p));
        p.set_variant(None);
        assert!(v7.matches(&p));
        p.set_variant(Some("v6".into()));
        assert!(!v7.matches(&p));
        p.set_architecture(Arch::ARM64);
        assert!(!v7.matches(&p));
    }
}
