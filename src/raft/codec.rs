//! The byte format of everything this layer persists or ships to peers.
//!
//! Every value is one format-version byte followed by MessagePack (`rmp_serde::to_vec_named`, so
//! fields are named and new optional fields stay decodable). Only [`FORMAT_V1`] exists today; a
//! future format gets its own byte and a decoder for the old one is kept forever, because log
//! entries, votes and snapshot metadata written by older releases stay on disk.
//!
//! Depends on nothing but serde; it must not know about RocksDB or the network.
use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current (and so far only) format version byte.
pub const FORMAT_V1: u8 = 1;

/// Encode `value` as `[FORMAT_V1] ++ MessagePack`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    let mut out = vec![FORMAT_V1];
    rmp_serde::encode::write_named(&mut out, value).map_err(io::Error::other)?;
    Ok(out)
}

/// Decode bytes produced by [`encode`]; an unknown version byte is an `InvalidData` error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => {
            rmp_serde::from_slice(body).map_err(|e| invalid(format!("decode: {e}")))
        }
        Some((v, _)) => Err(invalid(format!("unknown format version {v}"))),
        None => Err(invalid("empty value".to_string())),
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let bytes = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        let back: (u64, String) = decode(&bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));

        let mut future = bytes.clone();
        future[0] = 2;
        assert!(decode::<(u64, String)>(&future).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }
}
