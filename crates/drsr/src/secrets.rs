//! Decrypting replicated secrets (MS-DRSR 4.1.10.6.11 and MS-SAMR 2.2.11.1.3):
//! the value is salt ‖ RC4(MD5(session key ‖ salt), CRC32 ‖ data), and for
//! `unicodePwd` the data is the NT hash encrypted with two DES keys made
//! from the account's RID. The NT hash goes no further than the caller.

use des::Des;
use des::cipher::{BlockDecrypt, KeyInit as DesKeyInit};
use md5::{Digest, Md5};
use rc4::{Rc4, StreamCipher, consts::U16};

use crate::RpcError;

/// Removes the session-key layer: checks the CRC, returns the inner data.
pub fn decrypt_secret(session_key: &[u8; 16], value: &[u8]) -> Result<Vec<u8>, RpcError> {
    if value.len() < 16 + 4 {
        return Err(RpcError::Malformed("secret attribute (too short)".into()));
    }
    let (salt, encrypted) = value.split_at(16);
    let mut h = Md5::new();
    h.update(session_key);
    h.update(salt);
    let key: [u8; 16] = h.finalize().into();
    let mut plain = encrypted.to_vec();
    Rc4::<U16>::new(&key.into()).apply_keystream(&mut plain);
    let (crc, data) = plain.split_at(4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(data) != expected {
        return Err(RpcError::Malformed("secret attribute (CRC mismatch: wrong session key, or tampered)".into()));
    }
    Ok(data.to_vec())
}

/// 7 bytes → an 8-byte DES key (the low bit of each byte is parity, unused).
fn des_key(k: [u8; 7]) -> [u8; 8] {
    [
        k[0] >> 1,
        ((k[0] & 0x01) << 6) | (k[1] >> 2),
        ((k[1] & 0x03) << 5) | (k[2] >> 3),
        ((k[2] & 0x07) << 4) | (k[3] >> 4),
        ((k[3] & 0x0f) << 3) | (k[4] >> 5),
        ((k[4] & 0x1f) << 2) | (k[5] >> 6),
        ((k[5] & 0x3f) << 1) | (k[6] >> 7),
        k[6] & 0x7f,
    ]
    .map(|b| b << 1)
}

/// The NT hash from the inner `unicodePwd` data (16 bytes, DES with RID keys).
pub fn nt_hash_from_rid_encrypted(data: &[u8], rid: u32) -> Result<[u8; 16], RpcError> {
    if data.len() != 16 {
        return Err(RpcError::Malformed(format!("unicodePwd ({} bytes, expected 16)", data.len())));
    }
    let r = rid.to_le_bytes();
    let k1 = des_key([r[0], r[1], r[2], r[3], r[0], r[1], r[2]]);
    let k2 = des_key([r[3], r[0], r[1], r[2], r[3], r[0], r[1]]);
    let mut out = [0u8; 16];
    for (i, key) in [k1, k2].iter().enumerate() {
        let cipher = Des::new_from_slice(key).map_err(|_| RpcError::Malformed("DES key".into()))?;
        let mut block = des::cipher::generic_array::GenericArray::clone_from_slice(&data[i * 8..i * 8 + 8]);
        cipher.decrypt_block(&mut block);
        out[i * 8..i * 8 + 8].copy_from_slice(&block);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use des::cipher::BlockEncrypt;

    #[test]
    fn layers_round_trip_and_a_bad_crc_is_refused() {
        // Build a value the way a DC does, then take it apart.
        let session_key = [7u8; 16];
        let nt = [0x11u8; 16];
        let rid = 1104u32;
        let r = rid.to_le_bytes();
        let mut inner = Vec::new();
        for (i, k) in
            [[r[0], r[1], r[2], r[3], r[0], r[1], r[2]], [r[3], r[0], r[1], r[2], r[3], r[0], r[1]]].iter().enumerate()
        {
            let cipher = Des::new_from_slice(&des_key(*k)).unwrap();
            let mut block = des::cipher::generic_array::GenericArray::clone_from_slice(&nt[i * 8..i * 8 + 8]);
            cipher.encrypt_block(&mut block);
            inner.extend_from_slice(&block);
        }
        let salt = [3u8; 16];
        let mut plain = crc32fast::hash(&inner).to_le_bytes().to_vec();
        plain.extend_from_slice(&inner);
        let mut h = Md5::new();
        h.update(session_key);
        h.update(salt);
        let key: [u8; 16] = h.finalize().into();
        Rc4::<U16>::new(&key.into()).apply_keystream(&mut plain);
        let mut value = salt.to_vec();
        value.extend_from_slice(&plain);
        let data = decrypt_secret(&session_key, &value).unwrap();
        assert_eq!(nt_hash_from_rid_encrypted(&data, rid).unwrap(), nt);
        assert!(decrypt_secret(&[8u8; 16], &value).is_err(), "another session key fails the CRC");
        assert!(decrypt_secret(&session_key, &value[..10]).is_err());
        assert!(nt_hash_from_rid_encrypted(&data[..8], rid).is_err());
    }
}
