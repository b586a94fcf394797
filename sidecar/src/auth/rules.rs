//! Claim checks beyond the signature, `exp`, `sub` and `aud`: `iss` and a maximum token lifetime
//! ([`TokenRules`], `--jwt-issuer`, `--jwt-max-ttl`), and the rule that a public key needs an
//! audience.

use std::time::Duration;

use super::{
    AuthConfigError, AuthError, Authenticator, Claims, LEEWAY_SECS, Mode, PUBLIC_KEY_FLAG,
};

/// Claim checks beyond the signature, `exp`, `sub` and `aud`, applied with
/// [`Authenticator::with_rules`] (settings `jwtIssuer`, `jwtMaxTtl`). The default checks nothing
/// more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRules {
    /// `--jwt-issuer`: tokens must carry exactly this `iss` (RFC 7519 §4.1.1); refused with
    /// [`AuthError::MissingClaim`]`("iss")` or [`AuthError::WrongIssuer`].
    pub issuer: Option<String>,
    /// `--jwt-max-ttl`: the longest lifetime a token may have. A token is refused with
    /// [`AuthError::LifetimeTooLong`] when `exp - iat` exceeds it (`iat` present), or when
    /// `exp - now` exceeds it by more than [`LEEWAY_SECS`] (clock skew). `exp` is always
    /// required. Whole seconds; at least 1.
    pub max_ttl: Option<Duration>,
}

impl Authenticator {
    /// This authenticator with the extra claim checks of `rules` (replacing any set before).
    /// A disabled authenticator stays disabled.
    ///
    /// # Errors
    /// [`AuthConfigError::EmptyIssuer`], [`AuthConfigError::ZeroMaxTtl`].
    pub fn with_rules(mut self, rules: &TokenRules) -> Result<Self, AuthConfigError> {
        if rules.issuer.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(AuthConfigError::EmptyIssuer);
        }
        if rules.max_ttl.is_some_and(|t| t.as_secs() == 0) {
            return Err(AuthConfigError::ZeroMaxTtl);
        }
        if let Mode::Jwt {
            validation,
            max_ttl,
            ..
        } = &mut self.mode
        {
            match &rules.issuer {
                Some(iss) => {
                    validation.set_issuer(&[iss]);
                    validation.required_spec_claims.insert("iss".to_owned());
                }
                None => {
                    validation.iss = None;
                    validation.required_spec_claims.remove("iss");
                }
            }
            *max_ttl = rules.max_ttl.map(|t| t.as_secs());
        }
        Ok(self)
    }
}

/// [`TokenRules::max_ttl`]: `exp - iat` at most `max` (when `iat` is present), and `exp - now` at
/// most `max` plus [`LEEWAY_SECS`]. `exp` was already required and checked by `jsonwebtoken`.
pub(super) fn check_lifetime(claims: &Claims, max: u64, now: u64) -> Result<(), AuthError> {
    let number = |v: &Option<serde_json::Value>, name: &'static str| match v {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(AuthError::InvalidClaim(name)),
    };
    let exp = number(&claims.exp, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
    let too_long = AuthError::LifetimeTooLong { max_secs: max };
    if let Some(iat) = number(&claims.iat, "iat")?
        && exp - iat > max as f64
    {
        return Err(too_long);
    }
    if exp - now as f64 > max.saturating_add(LEEWAY_SECS) as f64 {
        return Err(too_long);
    }
    Ok(())
}

/// A public key needs an audience (see the module docs).
pub(super) fn require_audience(
    flag: &'static str,
    audience: Option<&str>,
) -> Result<(), AuthConfigError> {
    if flag == PUBLIC_KEY_FLAG && audience.is_none() {
        return Err(AuthConfigError::PublicKeyWithoutAudience);
    }
    Ok(())
}
