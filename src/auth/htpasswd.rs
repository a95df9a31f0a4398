//! htpasswd files as nginx's `auth_basic_user_file` reads them: `user:hash` lines, `#`
//! comments, the first line of a user wins. Hashes: bcrypt (`$2y$`, `$2a$`, `$2b$`), apr1
//! and MD5-crypt (`$apr1$`, `$1$`), `{SHA}`, `{SSHA}`, `{PLAIN}`, and what nginx hands to
//! crypt(3): DES crypt and SHA-crypt (`$5$`, `$6$`). A user whose hash cannot be checked gets
//! 500, as nginx answers when crypt() fails.

use std::collections::HashMap;

use base64::Engine;
use md5::{Digest as _, Md5};
use sha1::Sha1;

/// One stored password hash, parsed once per configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// The full bcrypt string (`$2y$05$...`); verifying costs 2^cost rounds.
    Bcrypt(String),
    /// `$apr1$salt$hash` or `$1$salt$hash`: MD5-crypt with its magic.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        full: String,
    },
    /// `{SHA}base64(sha1(password))`.
    Sha1([u8; 20]),
    /// `{SSHA}base64(sha1(password + salt) + salt)`.
    SaltedSha1 { digest: [u8; 20], salt: Vec<u8> },
    /// `{PLAIN}password`.
    Plain(String),
    /// DES crypt (13 characters) or SHA-crypt (`$5$`, `$6$`), as crypt(3) checks them.
    Crypt(String),
    /// A hash nothing can check (empty, malformed): signing in as this user is a 500.
    Invalid,
}

impl std::fmt::Debug for PasswordHash {
    // Never print a hash into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Md5Crypt { magic, .. } => magic,
            PasswordHash::Sha1(_) => "{SHA}",
            PasswordHash::SaltedSha1 { .. } => "{SSHA}",
            PasswordHash::Plain(_) => "{PLAIN}",
            PasswordHash::Crypt(_) => "crypt",
            PasswordHash::Invalid => "invalid",
        };
        write!(f, "PasswordHash({kind})")
    }
}

impl PasswordHash {
    /// Parse the hash field of a line; `Err` names the unsupported format.
    pub fn parse(hash: &str) -> Result<PasswordHash, String> {
        if hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$") {
            // The bcrypt crate validates cost and length when verifying; check the shape now.
            if hash.len() != 60 {
                return Err("malformed bcrypt hash".into());
            }
            return Ok(PasswordHash::Bcrypt(hash.to_string()));
        }
        for magic in ["$apr1$", "$1$"] {
            if let Some(rest) = hash.strip_prefix(magic) {
                let Some((salt, _)) = rest.split_once('$') else {
                    return Err(format!("malformed {magic} hash"));
                };
                let salt: String = salt.chars().take(8).collect();
                return Ok(PasswordHash::Md5Crypt {
                    magic,
                    salt,
                    full: hash.to_string(),
                });
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(rest) = hash.strip_prefix("{SHA}") {
            let bytes = b64.decode(rest).map_err(|_| "malformed {SHA} hash")?;
            let digest: [u8; 20] = bytes.try_into().map_err(|_| "malformed {SHA} hash")?;
            return Ok(PasswordHash::Sha1(digest));
        }
        if let Some(rest) = hash.strip_prefix("{SSHA}") {
            let bytes = b64.decode(rest).map_err(|_| "malformed {SSHA} hash")?;
            if bytes.len() <= 20 {
                return Err("malformed {SSHA} hash".into());
            }
            let (digest, salt) = bytes.split_at(20);
            return Ok(PasswordHash::SaltedSha1 {
                digest: digest.try_into().expect("split at 20"),
                salt: salt.to_vec(),
            });
        }
        if let Some(rest) = hash.strip_prefix("{PLAIN}") {
            return Ok(PasswordHash::Plain(rest.to_string()));
        }
        let des = hash.len() == 13 && hash.bytes().all(|b| CRYPT_ALPHABET.contains(&b));
        if des || hash.starts_with("$5$") || hash.starts_with("$6$") {
            return Ok(PasswordHash::Crypt(hash.to_string()));
        }
        Err("unsupported or malformed hash (htpasswd -B makes bcrypt hashes)".into())
    }

    /// Whether bcrypt work is needed (worth running off the async workers).
    pub fn is_slow(&self) -> bool {
        match self {
            PasswordHash::Bcrypt(_) => true,
            PasswordHash::Crypt(hash) => hash.starts_with('$'),
            _ => false,
        }
    }

    /// Whether `password` matches (compared in constant time where we compute the hash);
    /// `None` when the stored hash cannot be checked.
    pub fn check(&self, password: &[u8]) -> Option<bool> {
        match self {
            PasswordHash::Invalid => None,
            PasswordHash::Crypt(hash) => Some(pwhash::unix::verify(password, hash)),
            other => Some(other.verify(password)),
        }
    }

    /// Whether `password` matches; an unusable hash matches nothing.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Invalid => false,
            PasswordHash::Crypt(hash) => pwhash::unix::verify(password, hash),
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Md5Crypt { magic, salt, full } => ct_eq(
                md5_crypt(password, salt.as_bytes(), magic).as_bytes(),
                full.as_bytes(),
            ),
            PasswordHash::Sha1(digest) => ct_eq(&Sha1::digest(password), digest),
            PasswordHash::SaltedSha1 { digest, salt } => {
                let mut h = Sha1::new();
                h.update(password);
                h.update(salt);
                ct_eq(&h.finalize(), digest)
            }
            PasswordHash::Plain(plain) => ct_eq(plain.as_bytes(), password),
        }
    }
}

/// Whether a Secret value is one password hash (an `auth-map` entry), so the cluster source
/// keeps it although its key is a user name.
pub fn looks_like_hash(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .is_ok_and(|v| !v.trim().contains('\n') && PasswordHash::parse(v.trim()).is_ok())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Poul-Henning Kamp's MD5-crypt (`$1$`), which Apache's apr1 reuses with its own magic.
pub fn md5_crypt(password: &[u8], salt: &[u8], magic: &str) -> String {
    let salt = &salt[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic.as_bytes());
    ctx.update(salt);
    let alt = {
        let mut alt = Md5::new();
        alt.update(password);
        alt.update(salt);
        alt.update(password);
        alt.finalize()
    };
    let mut left = password.len();
    while left > 0 {
        ctx.update(&alt[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut i = password.len();
    while i != 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    let mut out = String::with_capacity(magic.len() + salt.len() + 23);
    out.push_str(magic);
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(CRYPT_ALPHABET[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    to64(f(11), 2);
    out
}

/// The users of one htpasswd file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<String, PasswordHash>,
}

impl Htpasswd {
    /// Parse htpasswd text. Lines that cannot be used are returned as (line number, reason)
    /// and skipped, as nginx skips what it cannot match.
    pub fn parse(text: &str) -> (Htpasswd, Vec<(usize, String)>) {
        let mut users = HashMap::new();
        let mut problems = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':') else {
                problems.push((index + 1, "no `:` between user and hash".to_string()));
                continue;
            };
            // nginx ends the password field at the next `:` (a comment may follow).
            let hash = rest.split(':').next().unwrap_or("");
            let hash = PasswordHash::parse(hash).unwrap_or_else(|e| {
                problems.push((index + 1, format!("user {user:?}: {e}")));
                PasswordHash::Invalid
            });
            users.entry(user.to_string()).or_insert(hash);
        }
        (Htpasswd { users }, problems)
    }

    /// An `auth-map` Secret: each key is a user, each value its hash.
    pub fn from_map<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (Htpasswd, Vec<String>) {
        let mut users = HashMap::new();
        let mut problems = Vec::new();
        for (user, hash) in entries {
            let hash = PasswordHash::parse(hash.trim()).unwrap_or_else(|e| {
                problems.push(format!("user {user:?}: {e}"));
                PasswordHash::Invalid
            });
            users.insert(user.to_string(), hash);
        }
        (Htpasswd { users }, problems)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl passwd -1|-apr1 -salt ...` and `htpasswd -nb[msB]`.
    #[test]
    fn md5_crypt_matches_openssl() {
        assert_eq!(
            md5_crypt(b"s3cret", b"abcdefgh", "$1$"),
            "$1$abcdefgh$7.vq19w/w3Vm.hk1FOA7Q/"
        );
        assert_eq!(
            md5_crypt(b"s3cret", b"abcdefgh", "$apr1$"),
            "$apr1$abcdefgh$M2T3erDstkD7SsE2QQnfH0"
        );
        assert_eq!(
            md5_crypt(b"", b"xy", "$apr1$"),
            "$apr1$xy$43..WIhbfuznGvwoCyUek/"
        );
        assert_eq!(
            md5_crypt(
                b"a very long password that exceeds sixteen bytes",
                b"12345678",
                "$apr1$"
            ),
            "$apr1$12345678$uLJCzDmVKltBxOrieVvHN1"
        );
    }

    #[test]
    fn htpasswd_lines() {
        let text = "# users\nalice:$apr1$5QX.s9w/$UKyJWNeLt0wr8U9OYGfIt1\r\n\
                    bob:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=:a comment\n\
                    carol:$2y$05$zeHXFTHjQfZsbiEiNWqa9.zXeQje0XhoxKr3Pzfeg0lwzgI8PTrTS\n\
                    alice:{PLAIN}second-line-ignored\n\
                    dave:abhWCwoTZY2c6\n\
                    erin:$6$salt$DGAQW8l.nT4RCbPNEQZjx6ZZzjHy2eW5krORahM6YQzUbUKsZPuhNkX7AUpx1TMPuF37mzmXtWWdUw3tTKEd.1\n\
                    frank:\n\
                    nocolon\n";
        let (file, problems) = Htpasswd::parse(text);
        assert!(file.get("alice").unwrap().verify(b"s3cret"));
        assert!(!file.get("alice").unwrap().verify(b"second-line-ignored"));
        assert!(file.get("bob").unwrap().verify(b"s3cret"));
        assert!(!file.get("bob").unwrap().verify(b"s3cre"));
        assert!(file.get("carol").unwrap().verify(b"s3cret"));
        assert!(!file.get("carol").unwrap().verify(b"S3cret"));
        // Python's `crypt.crypt('s3cret', 'ab')` and `openssl passwd -6 -salt salt s3cret`.
        assert_eq!(file.get("dave").unwrap().check(b"s3cret"), Some(true));
        assert_eq!(file.get("erin").unwrap().check(b"s3cret"), Some(true));
        assert_eq!(file.get("erin").unwrap().check(b"s3creT"), Some(false));
        assert_eq!(file.get("dave").unwrap().check(b"s3cre"), Some(false));
        assert_eq!(file.get("frank").unwrap().check(b""), None);
        assert_eq!(
            problems.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![8, 9],
            "{problems:?}"
        );
    }
}
