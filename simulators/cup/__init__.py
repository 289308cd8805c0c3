"""A stand-in for the CUP: synthetic source data (services, bookings, payments) with planted problems."""
