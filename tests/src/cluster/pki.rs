//! Certificates and keys of the test control plane, made with rcgen (ECDSA P-256): a CA, the
//! API server's serving certificate, client certificates (the admin is in `system:masters`), and
//! the service-account token signing key (kube-apiserver accepts ECDSA keys for
//! `--service-account-signing-key-file`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM files under one directory (all 0600).
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (`--client-ca-file`, every kubeconfig's `certificate-authority-data`).
    pub ca_cert: PathBuf,
    /// The CA key (`--cluster-signing-key-file` of the controller-manager).
    pub ca_key: PathBuf,
    /// kube-apiserver's serving certificate and key.
    pub server_cert: PathBuf,
    /// See [`Pki::server_cert`].
    pub server_key: PathBuf,
    /// The service-account signing key (private, PKCS#8).
    pub sa_key: PathBuf,
    /// Its public half (`--service-account-key-file`).
    pub sa_pub: PathBuf,
}

/// A client certificate and key in PEM.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Certificate PEM.
    pub cert: String,
    /// Private key PEM.
    pub key: String,
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "codex-e2e-cluster-ca");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// The signing half of the PKI, kept to issue client certificates after start-up.
pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
}

impl Authority {
    /// Issues a client certificate for user `cn` in the groups `orgs` (Kubernetes reads the
    /// subject's CN as the user name and each O as a group).
    pub fn client(&self, cn: &str, orgs: &[&str]) -> anyhow::Result<ClientCert> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(ClientCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Makes the PKI in `dir`: the serving certificate is valid for `localhost`, `127.0.0.1`,
/// `extra_ips` (the Docker bridge gateway, where pods reach the API server) and the in-cluster
/// names of the `kubernetes` Service.
pub fn make(dir: &Path, extra_ips: &[IpAddr]) -> anyhow::Result<(Pki, Authority)> {
    std::fs::create_dir_all(dir)?;
    let params = ca_params()?;
    let ca_key = KeyPair::generate()?;
    let ca = params.self_signed(&ca_key)?;

    let mut sp = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    sp.subject_alt_names
        .push(SanType::IpAddress("10.0.0.1".parse()?));
    for ip in extra_ips {
        sp.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    sp.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_key = KeyPair::generate()?;
    let server = sp.signed_by(&server_key, &Issuer::from_params(&params, &ca_key))?;
    let sa = KeyPair::generate()?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    write_private(&pki.ca_cert, &ca.pem())?;
    write_private(&pki.ca_key, &ca_key.serialize_pem())?;
    write_private(&pki.server_cert, &server.pem())?;
    write_private(&pki.server_key, &server_key.serialize_pem())?;
    write_private(&pki.sa_key, &sa.serialize_pem())?;
    write_private(&pki.sa_pub, &sa.public_key_pem())?;
    Ok((
        pki,
        Authority {
            params,
            key: ca_key,
        },
    ))
}
