pub mod bench;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod plan;
pub mod score;
