module vpcni/plugin

go 1.19
