//! Challenge strings (spec 4.3).

use rand::Rng;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;

/// Length of the challenge strings we hand out (the spec allows 32 to 256 and
/// recommends at least 64).
pub const CHALLENGE_LEN: usize = 64;

/// A fresh challenge: [`CHALLENGE_LEN`] characters of `[a-zA-Z0-9]` from the
/// operating system's CSPRNG, with at least one lowercase letter, one
/// uppercase letter and one digit (spec 4.3).
pub fn generate_challenge() -> String {
    loop {
        let challenge: String = (&mut OsRng)
            .sample_iter(&Alphanumeric)
            .take(CHALLENGE_LEN)
            .map(char::from)
            .collect();
        // A draw misses a class with probability below 1e-12, so this loop
        // practically never repeats; redrawing keeps the distribution uniform.
        if challenge.bytes().any(|b| b.is_ascii_lowercase())
            && challenge.bytes().any(|b| b.is_ascii_uppercase())
            && challenge.bytes().any(|b| b.is_ascii_digit())
        {
            return challenge;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn challenge_has_the_length_and_every_character_class() {
        for _ in 0..200 {
            let c = generate_challenge();
            assert_eq!(c.len(), CHALLENGE_LEN);
            assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(c.bytes().any(|b| b.is_ascii_lowercase()));
            assert!(c.bytes().any(|b| b.is_ascii_uppercase()));
            assert!(c.bytes().any(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn challenges_are_unique() {
        let set: HashSet<String> = (0..1000).map(|_| generate_challenge()).collect();
        assert_eq!(set.len(), 1000);
    }
}
