//! The stub domain: the device models of one HVM guest (see the library).

#![no_std]
#![no_main]
#![deny(unsafe_code)]

ferrite_stubdom::entry_point!(ferrite_stubdom::serve);
