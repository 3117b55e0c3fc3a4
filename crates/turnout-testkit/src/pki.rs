//! Test certificates made with the `openssl` command (scripts/test-all.sh installs it):
//! a CA, a server certificate for localhost and 127.0.0.1, and a client certificate.

use std::path::{Path, PathBuf};

/// The files [`make_pki`] writes.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// A server certificate for `localhost` and `127.0.0.1`, signed by the CA.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (`clientAuth`), signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the TLS tests need the `openssl` command (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 CA `<name>-ca.pem`, a server certificate `<name>-srv.pem` (key
/// `<name>-srv.key`) and a client certificate `<name>-cli.pem` (key `<name>-cli.key`)
/// it signed, in `dir`; valid for a day.
pub fn make_pki(dir: &Path, name: &str) -> Pki {
    let f = |suffix: &str| format!("{name}-{suffix}");
    let curve = "ec_paramgen_curve:prime256v1";
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            curve,
            "-nodes",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-days",
            "1",
            "-keyout",
            &f("ca.key"),
            "-out",
            &f("ca.pem"),
        ],
        dir,
    );
    let leaf = |kind: &str, cn: &str, ext: &str| {
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                curve,
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &f(&format!("{kind}.key")),
                "-out",
                &f(&format!("{kind}.csr")),
            ],
            dir,
        );
        std::fs::write(dir.join(f(&format!("{kind}.cnf"))), ext).expect("write the extensions");
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &f(&format!("{kind}.csr")),
                "-CA",
                &f("ca.pem"),
                "-CAkey",
                &f("ca.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &f(&format!("{kind}.cnf")),
                "-out",
                &f(&format!("{kind}.pem")),
            ],
            dir,
        );
    };
    leaf(
        "srv",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    leaf(
        "cli",
        "turnout",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    Pki {
        ca: dir.join(f("ca.pem")),
        server_cert: dir.join(f("srv.pem")),
        server_key: dir.join(f("srv.key")),
        client_cert: dir.join(f("cli.pem")),
        client_key: dir.join(f("cli.key")),
    }
}
