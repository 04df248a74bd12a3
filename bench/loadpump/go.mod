module ascendra/bench/loadpump

go 1.21
