//! `jsonwebtoken`'s cryptography on `ring`, the library rustls already uses here.
//!
//! jsonwebtoken 11 ships two backends, aws-lc-rs and RustCrypto. aws-lc-rs would
//! put a second crypto library next to ring in every function (about 1.5 MB of
//! machine code), and RustCrypto's P-256 is several times slower than ring's
//! assembly for ES256. So jsonwebtoken is built without a backend and this
//! provider is installed instead: [`install`] must run before any token is
//! signed or verified; [`crate::auth::Authenticator::new`] calls it.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    self as sig, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair, RsaEncoding, RsaKeyPair,
    RsaParameters, VerificationAlgorithm,
};
use ring::{digest, hmac};

/// The provider; [`install`] makes it jsonwebtoken's process default.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key,
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

/// Makes [`PROVIDER`] jsonwebtoken's process default. Idempotent; cheap after
/// the first call.
pub fn install() {
    // Err only means a provider is already installed: ours, since nothing else
    // in the process installs one and jsonwebtoken has no backend feature.
    let _ = PROVIDER.install_default();
}

fn require(family: AlgorithmFamily, expected: AlgorithmFamily) -> Result<()> {
    if family == expected {
        Ok(())
    } else {
        Err(ErrorKind::InvalidKeyFormat.into())
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let algorithm = *algorithm;
    require(key.family(), algorithm.family())?;
    let bytes = key.as_bytes();
    let kind = match algorithm {
        Algorithm::HS256 => SignerKind::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes)),
        Algorithm::HS384 => SignerKind::Hmac(hmac::Key::new(hmac::HMAC_SHA384, bytes)),
        Algorithm::HS512 => SignerKind::Hmac(hmac::Key::new(hmac::HMAC_SHA512, bytes)),
        Algorithm::ES256 => SignerKind::Ecdsa(ecdsa_key_pair(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, bytes)?),
        Algorithm::ES384 => SignerKind::Ecdsa(ecdsa_key_pair(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, bytes)?),
        Algorithm::RS256 => rsa_signer(&sig::RSA_PKCS1_SHA256, bytes)?,
        Algorithm::RS384 => rsa_signer(&sig::RSA_PKCS1_SHA384, bytes)?,
        Algorithm::RS512 => rsa_signer(&sig::RSA_PKCS1_SHA512, bytes)?,
        Algorithm::PS256 => rsa_signer(&sig::RSA_PSS_SHA256, bytes)?,
        Algorithm::PS384 => rsa_signer(&sig::RSA_PSS_SHA384, bytes)?,
        Algorithm::PS512 => rsa_signer(&sig::RSA_PSS_SHA512, bytes)?,
        Algorithm::EdDSA => SignerKind::Ed25519(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingSigner { algorithm, kind }))
}

fn ecdsa_key_pair(algorithm: &'static EcdsaSigningAlgorithm, pkcs8: &[u8]) -> Result<EcdsaKeyPair> {
    EcdsaKeyPair::from_pkcs8(algorithm, pkcs8, &SystemRandom::new())
        .map_err(|_| ErrorKind::InvalidEcdsaKey.into())
}

fn rsa_signer(padding: &'static dyn RsaEncoding, der: &[u8]) -> Result<SignerKind> {
    let key = RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    Ok(SignerKind::Rsa(key, padding))
}

struct RingSigner {
    algorithm: Algorithm,
    kind: SignerKind,
}

enum SignerKind {
    Hmac(hmac::Key),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    Ed25519(Ed25519KeyPair),
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let failed = |_| signature::Error::new();
        Ok(match &self.kind {
            SignerKind::Hmac(key) => hmac::sign(key, message).as_ref().to_vec(),
            SignerKind::Ecdsa(key) => key
                .sign(&SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            SignerKind::Rsa(key, padding) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(*padding, &SystemRandom::new(), message, &mut signature)
                    .map_err(failed)?;
                signature
            }
            SignerKind::Ed25519(key) => key.sign(message).as_ref().to_vec(),
        })
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let algorithm = *algorithm;
    require(key.family(), algorithm.family())?;
    let kind = match algorithm {
        Algorithm::HS256 => VerifierKind::Hmac(hmac::Key::new(hmac::HMAC_SHA256, key.try_get_as_bytes()?)),
        Algorithm::HS384 => VerifierKind::Hmac(hmac::Key::new(hmac::HMAC_SHA384, key.try_get_as_bytes()?)),
        Algorithm::HS512 => VerifierKind::Hmac(hmac::Key::new(hmac::HMAC_SHA512, key.try_get_as_bytes()?)),
        Algorithm::ES256 => VerifierKind::Public(&sig::ECDSA_P256_SHA256_FIXED, key.clone()),
        Algorithm::ES384 => VerifierKind::Public(&sig::ECDSA_P384_SHA384_FIXED, key.clone()),
        Algorithm::EdDSA => VerifierKind::Public(&sig::ED25519, key.clone()),
        Algorithm::RS256 => VerifierKind::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256, key.clone()),
        Algorithm::RS384 => VerifierKind::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384, key.clone()),
        Algorithm::RS512 => VerifierKind::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512, key.clone()),
        Algorithm::PS256 => VerifierKind::Rsa(&sig::RSA_PSS_2048_8192_SHA256, key.clone()),
        Algorithm::PS384 => VerifierKind::Rsa(&sig::RSA_PSS_2048_8192_SHA384, key.clone()),
        Algorithm::PS512 => VerifierKind::Rsa(&sig::RSA_PSS_2048_8192_SHA512, key.clone()),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier { algorithm, kind }))
}

struct RingVerifier {
    algorithm: Algorithm,
    kind: VerifierKind,
}

enum VerifierKind {
    Hmac(hmac::Key),
    /// ECDSA (an uncompressed point) and Ed25519 (the raw key).
    Public(&'static dyn VerificationAlgorithm, DecodingKey),
    /// A PKCS#1 `RSAPublicKey` or the modulus and exponent from a JWK.
    Rsa(&'static RsaParameters, DecodingKey),
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let outcome = match &self.kind {
            VerifierKind::Hmac(key) => hmac::verify(key, message, signature),
            VerifierKind::Public(algorithm, key) => {
                let bytes = key.try_get_as_bytes().map_err(signature::Error::from_source)?;
                sig::UnparsedPublicKey::new(*algorithm, bytes).verify(message, signature)
            }
            VerifierKind::Rsa(parameters, key) => match key.kind() {
                DecodingKeyKind::SecretOrDer(der) => {
                    sig::UnparsedPublicKey::new(*parameters, der).verify(message, signature)
                }
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    sig::RsaPublicKeyComponents { n, e }.verify(parameters, message, signature)
                }
            },
        };
        outcome.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

// The key utilities only serve `Jwk::from_encoding_key`/`from_decoding_key` and
// thumbprints, which this service does not use; they are here for completeness.

fn rsa_pub_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let key = RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
    Ok((components.n, components.e))
}

fn rsa_pub_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    // ring does not expose its RSAPublicKey parser.
    Err(
        ErrorKind::Provider("RSA public keys in DER form are not supported by the ring provider".into())
            .into(),
    )
}

fn ec_pub_components_from_private_key(
    pkcs8: &[u8],
    algorithm: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (signing, curve, coordinate_len) = match algorithm {
        Algorithm::ES256 => (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, EllipticCurve::P256, 32),
        Algorithm::ES384 => (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, EllipticCurve::P384, 48),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let key = ecdsa_key_pair(signing, pkcs8)?;
    match key.public_key().as_ref() {
        [4, point @ ..] if point.len() == 2 * coordinate_len => {
            let (x, y) = point.split_at(coordinate_len);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_pub_components_from_private_key(pkcs8: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| ErrorKind::InvalidEddsaKey)?
            .public_key()
            .as_ref()
            .to_vec()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
    use serde_json::{Value, json};

    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn round_trip(algorithm: Algorithm, encoding: &EncodingKey, decoding: &DecodingKey) {
        install();
        let claims = json!({"sub": "x", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, encoding).unwrap();
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<Value>(&token, decoding, &validation).unwrap();
        assert_eq!(decoded.claims, claims);
        // A flipped signature byte fails.
        let (rest, signature) = token.rsplit_once('.').unwrap();
        let mut signature = signature.to_owned().into_bytes();
        signature[3] = if signature[3] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{rest}.{}", String::from_utf8(signature).unwrap());
        let error = jsonwebtoken::decode::<Value>(&tampered, decoding, &validation).unwrap_err();
        assert!(matches!(error.kind(), ErrorKind::InvalidSignature), "{error:?}");
    }

    #[test]
    fn hmac_round_trips() {
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            round_trip(
                algorithm,
                &EncodingKey::from_secret(b"secret"),
                &DecodingKey::from_secret(b"secret"),
            );
        }
    }

    #[test]
    fn es256_round_trips_with_pem_and_jwk_keys() {
        let encoding = EncodingKey::from_ec_pem(fixture("es256-a.pem").as_bytes()).unwrap();
        let pem = DecodingKey::from_ec_pem(fixture("es256-a.pub.pem").as_bytes()).unwrap();
        round_trip(Algorithm::ES256, &encoding, &pem);
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&fixture("es256-a.jwk.json")).unwrap();
        round_trip(Algorithm::ES256, &encoding, &DecodingKey::from_jwk(&jwk).unwrap());
    }

    #[test]
    fn rsa_round_trips_with_pem_and_jwk_keys() {
        let encoding = EncodingKey::from_rsa_pem(fixture("rs256.pem").as_bytes()).unwrap();
        let pem = DecodingKey::from_rsa_pem(fixture("rs256.pub.pem").as_bytes()).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&fixture("rs256.jwk.json")).unwrap();
        let jwk = DecodingKey::from_jwk(&jwk).unwrap();
        for algorithm in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
            round_trip(algorithm, &encoding, &pem);
            round_trip(algorithm, &encoding, &jwk);
        }
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        install();
        let rsa = DecodingKey::from_rsa_pem(fixture("rs256.pub.pem").as_bytes()).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "x"}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        let error = jsonwebtoken::decode::<Value>(&token, &rsa, &validation).unwrap_err();
        assert!(matches!(error.kind(), ErrorKind::InvalidKeyFormat), "{error:?}");
    }

    #[test]
    fn jwk_helpers_work() {
        install();
        let encoding = EncodingKey::from_ec_pem(fixture("es256-a.pem").as_bytes()).unwrap();
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        let fixture: jsonwebtoken::jwk::Jwk = serde_json::from_str(&fixture("es256-a.jwk.json")).unwrap();
        assert_eq!(jwk.algorithm, fixture.algorithm);
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            fixture.thumbprint(ThumbprintHash::SHA256).unwrap()
        );
    }
}
