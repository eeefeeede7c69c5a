//go:build !race

package decide

const raceBuild = false
